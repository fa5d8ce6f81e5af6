"""A run's lifecycle on the writer thread: start, end, lost and found again.

`running` → `finished` | `stopped` | `failed` by the trainer's `run_end`;
`running` → `disconnected` when its stream drops, back to `running` when it
reconnects, and `failed` (`LostContact`) when it stays away past the grace
period. A later `fit` of the same LiveMonitor starts the run again.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any

from server.commands import expire_commands
from server.memory import WriterMemory
from server.protocol import dumps
from server.store import event_dict, run_dict

__all__ = [
    "LOST_CONTACT",
    "Changes",
    "close_lost_runs",
    "end_run",
    "mark_connected",
    "mark_disconnected",
    "progress",
    "read_run",
    "start_run",
]

LOST_CONTACT = "LostContact"

Event = tuple[int | None, float, str, int | None, float | None, dict[str, Any]]
"""An event row to insert: (seq, t, kind, step, epoch, data)."""


@dataclass
class Changes:
    """What one write changed, for the ack and the live push."""

    last_seq: int
    run: dict[str, Any] | None = None
    records: list[dict[str, Any]] = field(default_factory=list)
    """Stored `batch`, `epoch` and `lr` records: the live push builds its points from
    them, and only when a browser follows the run."""
    events: list[dict[str, Any]] = field(default_factory=list)
    commands: list[dict[str, Any]] = field(default_factory=list)


def read_run(conn: sqlite3.Connection, run_id: str) -> dict[str, Any]:
    return run_dict(conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone())


def start_run(
    conn: sqlite3.Connection, run_id: str, rec: dict[str, Any], exists: bool, now: float
) -> Event:
    """A `run_start` record: a new run, or the next `fit` of a known one."""
    meta = dumps(rec["meta"])
    if not exists:
        conn.execute(
            "INSERT INTO runs (id, name, project, status, created_at, updated_at,"
            " params, meta) VALUES (?, ?, ?, 'running', ?, ?, ?, ?)",
            (run_id, rec["name"], rec["project"], rec["t"], now, dumps(rec["params"]), meta),
        )
        fit = 1
    else:
        conn.execute(
            "UPDATE runs SET status = 'running', meta = ?, ended_at = NULL, error = NULL"
            " WHERE id = ?",
            (meta, run_id),
        )
        fit = (
            1
            + conn.execute(
                "SELECT count(*) FROM events WHERE run_id = ? AND kind = 'train_begin'", (run_id,)
            ).fetchone()[0]
        )
    return (rec["seq"], rec["t"], "train_begin", None, None, {"fit": fit})


def end_run(
    conn: sqlite3.Connection, run_id: str, rec: dict[str, Any], now: float
) -> tuple[Event, list[dict[str, Any]]]:
    """A `run_end` record: the run's final status; its unfinished commands expire."""
    status, error = rec["status"], rec["error"]
    conn.execute(
        "UPDATE runs SET status = ?, ended_at = ?, error = ? WHERE id = ?",
        (status, rec["t"], dumps(error) if error else None, run_id),
    )
    expired = expire_commands(conn, run_id, f"the run {status} before it could apply", now)
    event: Event = (rec["seq"], rec["t"], "train_end", None, None,
                    {"status": status, "error": error})  # fmt: skip
    return event, expired


def mark_connected(conn: sqlite3.Connection, memory: WriterMemory, run_id: str) -> Changes:
    """A trainer said hello: its run (if known) is running again.

    That includes a run closed as lost after the grace period: it was not over.
    """
    memo = memory.get(conn, run_id)
    changes = Changes(last_seq=memo.last_seq if memo else 0)
    lost = memo is not None and memo.status == "failed" and _lost_contact(conn, run_id)
    if memo is not None and (memo.status == "disconnected" or lost):
        now = time.time()
        conn.execute(
            "UPDATE runs SET status = 'running', updated_at = ?, ended_at = NULL, error = NULL"
            " WHERE id = ?",
            (now, run_id),
        )
        memo.status = "running"
        changes.run = read_run(conn, run_id)
        changes.events.append(_server_event(conn, run_id, now, "reconnected", {}))
    return changes


def progress(conn: sqlite3.Connection, memory: WriterMemory, run_id: str) -> Changes:
    """An uploader said hello: how far the run is stored; its status is left alone."""
    memo = memory.get(conn, run_id)
    return Changes(last_seq=memo.last_seq if memo else 0)


def mark_disconnected(
    conn: sqlite3.Connection, memory: WriterMemory, run_id: str, reason: str
) -> Changes:
    """A trainer's stream ended without `run_end`."""
    memo = memory.get(conn, run_id)
    changes = Changes(last_seq=memo.last_seq if memo else 0)
    if memo is not None and memo.status == "running":
        now = time.time()
        conn.execute(
            "UPDATE runs SET status = 'disconnected', updated_at = ? WHERE id = ?", (now, run_id)
        )
        memo.status = "disconnected"
        changes.run = read_run(conn, run_id)
        changes.events.append(_server_event(conn, run_id, now, "disconnected", {"reason": reason}))
    return changes


def close_lost_runs(
    conn: sqlite3.Connection, memory: WriterMemory, grace: float
) -> list[tuple[str, Changes]]:
    """Runs `disconnected` for more than `grace` seconds end as `failed` (LostContact)."""
    now = time.time()
    error = {
        "type": LOST_CONTACT,
        "message": f"no contact from the training process for {grace:g} seconds",
    }
    ids = [
        row[0]
        for row in conn.execute(
            "SELECT id FROM runs WHERE status = 'disconnected' AND updated_at < ?", (now - grace,)
        )
    ]
    out = []
    for run_id in ids:
        conn.execute(
            "UPDATE runs SET status = 'failed', ended_at = ?, updated_at = ?, error = ?"
            " WHERE id = ?",
            (now, now, dumps(error), run_id),
        )
        memo = memory.get(conn, run_id)
        if memo is not None:
            memo.status = "failed"
        changes = Changes(last_seq=memo.last_seq if memo else 0)
        changes.commands = expire_commands(
            conn, run_id, "the training process was lost before it could apply", now
        )
        changes.run = read_run(conn, run_id)
        data = {"status": "failed", "error": error}
        changes.events.append(_server_event(conn, run_id, now, "train_end", data))
        out.append((run_id, changes))
    return out


def _server_event(
    conn: sqlite3.Connection, run_id: str, t: float, kind: str, data: dict[str, Any]
) -> dict[str, Any]:
    """An event the server notes itself (no record, so no `seq`)."""
    row = conn.execute(
        "INSERT INTO events (run_id, seq, t, kind, data) VALUES (?, NULL, ?, ?, ?) RETURNING *",
        (run_id, t, kind, dumps(data)),
    ).fetchone()
    return event_dict(row)


def _lost_contact(conn: sqlite3.Connection, run_id: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM runs WHERE id = ? AND json_extract(error, '$.type') = ?",
        (run_id, LOST_CONTACT),
    ).fetchone()
    return row is not None
