"""The local spool: records the server has not acknowledged, kept on disk.

Shared by the callback (which writes it) and `fitdeck sync` (which uploads it),
so it lives beside the protocol and needs no Keras.

One file per run, `<spool dir>/<run_id>.jsonl`: a header line, then one
record per line in sequence order. The stream spills its oldest records here
when too many wait in memory, and everything left when training ends without
the server; it deletes the file once the server has acknowledged all of it.
`fitdeck sync` uploads what is left.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from server.protocol import Env, jsonable

__all__ = ["SEND_CHUNK", "Spool", "default_spool_dir"]

SEND_CHUNK = 1000
"""Most records a sender (the callback's stream, `fitdeck sync`) puts in one frame."""


def default_spool_dir() -> Path:
    """`$FITDECK_SPOOL_DIR`, else `$XDG_CACHE_HOME/fitdeck/spool`, else `~/.cache/fitdeck/spool`."""
    if os.environ.get(Env.SPOOL_DIR):
        return Path(os.environ[Env.SPOOL_DIR])
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "fitdeck" / "spool"


class Spool:
    """A run's spool file: append, read in order from a sequence number, drop when acked."""

    def __init__(self, path: Path, header: dict[str, Any] | None = None) -> None:
        self.path = path
        self.header = header or {}
        self.first_seq: int | None = None
        self.last_seq: int | None = None
        self._cursor: tuple[int, int] | None = None  # (byte offset, seq read up to there)
        self._torn = False  # the file ends inside a line (a crash mid-write)
        if path.exists():
            with path.open("rb") as f:
                if f.seek(0, os.SEEK_END) > 0:
                    f.seek(-1, os.SEEK_END)
                    self._torn = f.read(1) != b"\n"
            for record in self._records(0):
                if self.first_seq is None:
                    self.first_seq = record["seq"]
                self.last_seq = record["seq"]
            if self.last_seq is None:
                path.unlink()  # a header without records: nothing to keep

    def __len__(self) -> int:
        if self.first_seq is None or self.last_seq is None:
            return 0
        return self.last_seq - self.first_seq + 1

    def read_header(self) -> dict[str, Any]:
        with self.path.open("rb") as f:
            first = json.loads(f.readline() or b"{}")
        return first if "seq" not in first else {}

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        """Add records (in sequence order, after those already here)."""
        lines = [_line(r) for r in records]
        if not lines:
            return
        new = not self.path.exists()
        if new:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            if new:
                f.write(json.dumps({"fitdeck_spool": 1, **self.header}) + "\n")
            elif self._torn:  # end the torn line, or it swallows the first record
                f.write("\n")
            f.writelines(lines)
        self._torn = False
        first = json.loads(lines[0])["seq"]
        if self.first_seq is None:
            self.first_seq = first
        self.last_seq = json.loads(lines[-1])["seq"]

    def read_after(self, seq: int, limit: int) -> list[dict[str, Any]]:
        """Up to `limit` records with a sequence number above `seq`."""
        if self.last_seq is None or seq >= self.last_seq:
            return []
        offset = self._cursor[0] if self._cursor and self._cursor[1] == seq else 0
        out: list[dict[str, Any]] = []
        with self.path.open("rb") as f:
            f.seek(offset)
            while len(out) < limit:
                line = f.readline()
                if not line:
                    break
                record = _parse(line)
                if record is not None and record["seq"] > seq:
                    out.append(record)
            if out:
                self._cursor = (f.tell(), out[-1]["seq"])
        return out

    def drop_through(self, seq: int) -> None:
        """The server has everything up to `seq`: delete the file once that covers it all."""
        if self.last_seq is not None and seq >= self.last_seq:
            self.path.unlink(missing_ok=True)
            self.first_seq = self.last_seq = None
            self._cursor = None

    def _records(self, offset: int) -> Iterable[dict[str, Any]]:
        with self.path.open("rb") as f:
            f.seek(offset)
            for line in f:
                record = _parse(line)
                if record is not None:
                    yield record


def _line(record: dict[str, Any]) -> str:
    try:
        return json.dumps(record, allow_nan=False) + "\n"
    except (TypeError, ValueError):  # an object, a raw NaN: written as the stream sends it
        return json.dumps(jsonable(record, "record", depth=0)[0], allow_nan=False) + "\n"


def _parse(line: bytes) -> dict[str, Any] | None:
    """A record line; None for the header or a line torn by a crash mid-write."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and "seq" in record else None
