"""`fitdeck sync`: upload spool files left by runs whose server was away.

Speaks `/ws/train` like the callback (hello, `records` frames, acks) from the
spool file alone: no Keras needed.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.sync.client import connect

from server.protocol import (
    DEFAULT_URL,
    RUN_ID,
    Env,
    FrameError,
    Msg,
    dumps,
    encode_records,
    loads,
    train_ws_url,
)
from server.spool import SEND_CHUNK, Spool, default_spool_dir

__all__ = ["SyncResult", "sync"]

WINDOW = 8 * SEND_CHUNK  # records sent ahead of the last ack


@dataclass(frozen=True)
class SyncResult:
    path: Path
    run_id: str
    url: str
    records: int
    done: bool
    error: str | None = None
    """Why the file was not (fully) uploaded."""


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
    spool = Spool(path)
    header = spool.read_header() if path.exists() else {}
    run_id = str(header.get("run_id") or path.stem)
    target = url or os.environ.get(Env.URL) or header.get("url") or DEFAULT_URL
    token = token or os.environ.get(Env.TOKEN) or None
    if not RUN_ID.fullmatch(run_id) or path.stem != run_id:
        raise ValueError(f"{path} is not named after its run: expected {run_id}.jsonl.")
    records = len(spool)
    if records == 0:
        return SyncResult(path, run_id, target, 0, True)
    try:
        _upload(spool, run_id, train_ws_url(target), token, timeout)
    except (OSError, TimeoutError, InvalidHandshake, InvalidURI, ConnectionClosed) as exc:
        return SyncResult(path, run_id, target, records, False, f"{type(exc).__name__}: {exc}")
    except FrameError as exc:  # the peer does not speak fitdeck
        return SyncResult(path, run_id, target, records, False, f"not a fitdeck server: {exc}")
    return SyncResult(path, run_id, target, records, not path.exists())


def _upload(spool: Spool, run_id: str, ws_url: str, token: str | None, timeout: float) -> None:
    """Send the spool's records and drop them as the server acknowledges them."""
    deadline = time.monotonic() + timeout
    headers = {"Authorization": f"Bearer {token}"} if token else None
    with connect(
        ws_url,
        additional_headers=headers,
        open_timeout=min(timeout, 5.0),
        max_size=None,
        compression=None,
    ) as ws:
        ws.send(dumps(Msg.hello(run_id, role="sync")))  # an uploader: no command link
        welcome = loads(ws.recv(timeout=max(0.0, deadline - time.monotonic())))
        kind, last_seq = (
            (welcome.get("type"), welcome.get("last_seq"))
            if isinstance(welcome, dict)
            else (None, None)
        )
        if kind != "welcome" or type(last_seq) is not int:
            raise ConnectionError(f"expected a welcome, got {str(welcome)[:200]!r}")
        acked = sent = last_seq
        spool.drop_through(acked)
        while spool.last_seq is not None and acked < spool.last_seq:
            while sent < spool.last_seq and sent - acked < WINDOW:
                chunk = spool.read_after(sent, SEND_CHUNK)
                if not chunk:
                    break
                ws.send(encode_records(chunk, clean=True), text=True)
                sent = chunk[-1]["seq"]
            message = loads(ws.recv(timeout=max(0.0, deadline - time.monotonic())))
            ack = message.get("seq") if isinstance(message, dict) else None
            if type(ack) is int and message.get("type") == "ack":
                acked = max(acked, ack)
                spool.drop_through(acked)
        ws.close()
