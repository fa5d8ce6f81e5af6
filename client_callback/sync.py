"""`fitdeck sync`: upload spool files left by runs whose server was away."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from client_callback.spool import Spool, default_spool_dir
from client_callback.stream import Stream

__all__ = ["SyncResult", "sync"]

DEFAULT_URL = "http://127.0.0.1:8000"


@dataclass(frozen=True)
class SyncResult:
    path: Path
    run_id: str
    url: str
    records: int
    done: bool


def sync(
    path: Path | None = None,
    url: str | None = None,
    token: str | None = None,
    timeout: float = 60.0,
) -> list[SyncResult]:
    """Send every spool file under `path` (a file or a directory) to its server.

    A file is deleted once the server has acknowledged all of it; running again
    stores nothing twice, since the server keeps each (run, seq) once. The
    server is `url`, else `FITDECK_URL`, else the one the run streamed to.
    """
    path = path or default_spool_dir()
    files = [path] if path.is_file() else sorted(path.glob("*.jsonl"))
    return [_sync_file(f, url, token, timeout) for f in files]


def _sync_file(path: Path, url: str | None, token: str | None, timeout: float) -> SyncResult:
    header = Spool(path).read_header() if path.exists() else {}
    run_id = str(header.get("run_id") or path.stem)
    target = url or os.environ.get("FITDECK_URL") or header.get("url") or DEFAULT_URL
    token = token or os.environ.get("FITDECK_TOKEN") or None
    stream = Stream(target, run_id, token, spool_dir=path.parent)
    if stream.spool.path != path:
        raise ValueError(f"{path} is not named after its run: expected {run_id}.jsonl.")
    records = len(stream.spool)
    if records == 0:
        return SyncResult(path, run_id, target, 0, True)
    stream.start()
    deadline = time.monotonic() + timeout
    while not stream.connected and time.monotonic() < deadline:
        time.sleep(0.05)
    stream.finish(max(0.0, deadline - time.monotonic()))
    return SyncResult(path, run_id, target, records, not path.exists())
