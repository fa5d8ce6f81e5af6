"""Dashboard commands on the writer thread: created, moved along, expired.

A command's status only moves forward through `COMMAND_STATUSES`
(pending → delivered → applied | rejected, or expired when the run ends
first); a replayed status report changes nothing.

`commands.args` holds, as one JSON object, the command's arguments beyond
`kind` and `lr` (`set`: `name`, `value`; `stop`: `checkpoint`) and, once the
trainer reports it, its outcome under `"result"` (`store.command_dict` shows
them apart as `args` and `result`). An applied `pause` makes the run
`paused`, an applied `resume` (or a `stop` while paused) `running` again.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from server.errors import Conflict, NotFound
from server.protocol import COMMAND_STATUSES, ENDED, FINAL_COMMAND, dumps
from server.store import RESULT_KEY, command_dict

__all__ = [
    "create_command",
    "expire_commands",
    "paused_status",
    "unfinished_commands",
    "update_command",
]

MAX_RESULT = 4000
"""Longest stored `result`, as JSON text (characters); a longer one is cut to a note."""


def create_command(
    conn: sqlite3.Connection,
    run_id: str,
    kind: str,
    lr: float | None,
    args: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A new `pending` command for a run that can still apply it."""
    row = conn.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
    if row is None:
        raise NotFound(f"No run with id {run_id!r}.")
    if row[0] in ENDED:
        raise Conflict(f"Run {run_id!r} has already {row[0]}; commands can no longer apply.")
    now = time.time()
    cur = conn.execute(
        "INSERT INTO commands (run_id, kind, lr, status, created_at, updated_at, args)"
        " VALUES (?, ?, ?, 'pending', ?, ?, ?) RETURNING *",
        (run_id, kind, lr, now, now, dumps(args or {})),
    )
    return command_dict(cur.fetchone())


def update_command(
    conn: sqlite3.Connection, run_id: str, rec: dict[str, Any], now: float
) -> dict[str, Any] | None:
    """Apply a trainer's `command` record; the command if its status moved forward."""
    row = conn.execute(
        "SELECT status FROM commands WHERE id = ? AND run_id = ?", (rec["id"], run_id)
    ).fetchone()
    if row is None:
        return None
    old, new = row[0], rec["status"]
    if old in FINAL_COMMAND or COMMAND_STATUSES.index(new) <= COMMAND_STATUSES.index(old):
        return None
    result = rec.get("result")
    if result is not None:
        text = dumps(result)
        if len(text) > MAX_RESULT:
            text = dumps({"note": f"result of {len(text)} characters not kept"})
        conn.execute(
            "UPDATE commands SET args = json_set(args, '$.' || ?, json(?)) WHERE id = ?",
            (RESULT_KEY, text, rec["id"]),
        )
    cur = conn.execute(
        "UPDATE commands SET status = ?, reason = ?, updated_at = ?, epoch = ?, batch = ?,"
        " step = ? WHERE id = ? RETURNING *",
        (new, rec["reason"], now, rec["epoch"], rec["batch"], rec["step"], rec["id"]),
    )
    return command_dict(cur.fetchone())


def paused_status(conn: sqlite3.Connection, run_id: str, command: dict[str, Any]) -> str | None:
    """The run's new status when `command` (just moved forward) pauses or resumes it.

    `paused` for an applied `pause`; `running` for an applied `resume`. The run
    must be `running` or `paused` (an ended or disconnected run keeps its status).
    """
    if command["status"] != "applied" or command["kind"] not in ("pause", "resume"):
        return None
    new = "paused" if command["kind"] == "pause" else "running"
    row = conn.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
    if row is None or row[0] not in ("running", "paused") or row[0] == new:
        return None
    conn.execute(
        "UPDATE runs SET status = ?, updated_at = ? WHERE id = ?", (new, time.time(), run_id)
    )
    return new


def expire_commands(
    conn: sqlite3.Connection, run_id: str, reason: str, now: float
) -> list[dict[str, Any]]:
    """Every unfinished command of a run that has ended, now `expired`."""
    cur = conn.execute(
        "UPDATE commands SET status = 'expired', reason = ?, updated_at = ?"
        " WHERE run_id = ? AND status IN ('pending', 'delivered') RETURNING *",
        (reason, now, run_id),
    )
    return [command_dict(r) for r in cur.fetchall()]


def unfinished_commands(conn: sqlite3.Connection, run_id: str) -> list[dict[str, Any]]:
    """Commands a (re)connecting trainer must still hear of, oldest first."""
    rows = conn.execute(
        "SELECT * FROM commands WHERE run_id = ? AND status IN ('pending', 'delivered')"
        " ORDER BY id",
        (run_id,),
    ).fetchall()
    return [command_dict(r) for r in rows]
