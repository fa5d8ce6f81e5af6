"""Record ingest on the writer thread: the hot path from `/ws/train` into SQLite.

`apply_records` stores one frame's records for one run in one savepoint,
skipping those already stored (by `seq`), and dispatches each record by its
type: metric points (`batch`, `epoch`, `lr`) to the points and tiers tables,
command status reports to `server.commands`, `run_start` and `run_end` to
`server.lifecycle`. What it changed comes back as `Changes`, for the ack and
the live push.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from server import commands, downsample, lifecycle
from server.downsample import Point
from server.errors import BadRequest
from server.lifecycle import Changes, Event
from server.memory import RunMemo, WriterMemory
from server.protocol import FINAL_COMMAND, LR_KEY, dumps, encode_number
from server.store import TIER_UPSERT, event_dict

__all__ = ["Changes", "apply_records", "tier_rows"]

RUN_PUSH_PERIOD = 1.0  # seconds between summary pushes for progress alone


@dataclass
class _Frame:
    """One `apply_records` call: what its records add up to before it is written."""

    conn: sqlite3.Connection
    run_id: str
    memo: RunMemo
    exists: bool
    now: float
    changes: Changes
    rows: list[Row] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    run_set: dict[str, Any] = field(default_factory=dict)
    run_changed: bool = False
    last_logs: dict[str, float] | None = None
    new_series: dict[tuple[str, str], int] = field(default_factory=dict)
    series_of: dict[tuple[str, ...], list[int]] = field(default_factory=dict)

    def series_id(self, scope: str, key: str) -> int:
        k = (scope, key)
        sid = self.memo.series.get(k) or self.new_series.get(k)
        if sid is None:
            row = self.conn.execute(
                "SELECT id FROM series WHERE run_id = ? AND scope = ? AND key = ?",
                (self.run_id, scope, key),
            ).fetchone()
            if row is None:
                sid = self.conn.execute(
                    "INSERT INTO series (run_id, scope, key) VALUES (?, ?, ?)",
                    (self.run_id, scope, key),
                ).lastrowid
            else:
                sid = row[0]
            assert sid is not None
            self.new_series[k] = sid
        return sid


def apply_records(
    conn: sqlite3.Connection, memory: WriterMemory, run_id: str, records: list[dict[str, Any]]
) -> Changes:
    """Store the records not stored yet (by `seq`) for one run, in one savepoint."""
    memo = memory.get(conn, run_id)
    last_seq = memo.last_seq if memo else 0
    records = sorted((r for r in records if r["seq"] > last_seq), key=lambda r: r["seq"])
    if not records:
        return Changes(last_seq=last_seq)
    if memo is None and records[0]["type"] != "run_start":
        raise BadRequest(
            f"Run {run_id!r} is unknown and record {records[0]['seq']} is not its run_start."
        )
    # A new run's memo is kept only if every statement below succeeds.
    frame = _Frame(conn, run_id, memo or RunMemo(0, "running"), memo is not None,
                   time.time(), Changes(last_seq=last_seq))  # fmt: skip
    try:
        for rec in records:
            _HANDLERS[rec["type"]](frame, rec)
        _write(frame, records[-1]["seq"])
    except BaseException:
        memory.forget(run_id)  # its savepoint is rolled back: reload the run next time
        raise
    # Only now that every statement succeeded may the memo learn of them.
    frame.memo.series.update(frame.new_series)
    frame.memo.last_seq = frame.changes.last_seq = records[-1]["seq"]
    memory.put(run_id, frame.memo)
    return frame.changes


# -- one handler per record type --------------------------------------------------


def _metrics(f: _Frame, rec: dict[str, Any]) -> None:
    kind, logs = rec["type"], rec["logs"]
    step, epoch, t = rec["step"], rec["epoch"], rec["t"]
    keys = (kind, *logs)  # the same metrics, record after record: look ids up once
    sids = f.series_of.get(keys)
    if sids is None:
        sids = f.series_of[keys] = [f.series_id(kind, key) for key in logs]
    f.rows.extend(
        (s, step, epoch, t, None if v != v else v)  # NaN is NULL in SQLite
        for s, v in zip(sids, logs.values(), strict=True)
    )
    f.changes.records.append(rec)
    if kind == "batch":
        f.run_set["step"] = max(step, f.run_set.get("step", 0))
        f.last_logs = logs
    else:
        f.run_set["epoch"] = int(epoch)
        f.run_changed = True


def _lr(f: _Frame, rec: dict[str, Any]) -> None:
    lr = rec["lr"]
    f.rows.append((f.series_id("batch", LR_KEY), rec["step"], rec["epoch"], rec["t"], lr))
    f.changes.records.append(rec)
    data = {"lr": lr, "previous": rec["previous"], "source": rec["source"]}
    if rec["command_id"] is not None:
        data["command_id"] = rec["command_id"]
    if rec["previous"] is not None:  # the first reading is a point, not a change
        f.events.append((rec["seq"], rec["t"], "lr_change", rec["step"], rec["epoch"], data))
    f.run_set["lr"] = lr
    f.run_changed = True


def _command(f: _Frame, rec: dict[str, Any]) -> None:
    cmd = commands.update_command(f.conn, f.run_id, rec, f.now)
    if cmd is None:
        return
    f.changes.commands.append(cmd)
    paused = commands.paused_status(f.conn, f.run_id, cmd)  # pause / resume applied
    if paused is not None:
        f.memo.status = paused
        f.run_changed = True
    if cmd["status"] in FINAL_COMMAND:
        data = {"command_id": cmd["id"], "kind": cmd["kind"], "status": cmd["status"],
                "reason": cmd["reason"]}  # fmt: skip
        f.events.append((rec["seq"], rec["t"], "command", rec["step"], rec["epoch"], data))


def _event(f: _Frame, rec: dict[str, Any]) -> None:
    f.events.append((rec["seq"], rec["t"], rec["kind"], rec["step"], rec["epoch"], rec["data"]))


def _run_start(f: _Frame, rec: dict[str, Any]) -> None:
    f.events.append(lifecycle.start_run(f.conn, f.run_id, rec, f.exists, f.now))
    f.exists = True
    f.memo.status = "running"
    f.run_changed = True


def _run_end(f: _Frame, rec: dict[str, Any]) -> None:
    event, expired = lifecycle.end_run(f.conn, f.run_id, rec, f.now)
    f.events.append(event)
    f.changes.commands.extend(expired)
    f.memo.status = rec["status"]
    f.run_changed = True


_HANDLERS: dict[str, Callable[[_Frame, dict[str, Any]], None]] = {
    "batch": _metrics,
    "epoch": _metrics,
    "lr": _lr,
    "command": _command,
    "event": _event,
    "run_start": _run_start,
    "run_end": _run_end,
}


def _write(f: _Frame, new_last: int) -> None:
    """Points, tiers, events and the run's summary, in as few statements as it takes."""
    conn, run_id = f.conn, f.run_id
    if f.rows:
        conn.executemany("INSERT OR REPLACE INTO points VALUES (?, ?, ?, ?, ?)", f.rows)
        conn.executemany(TIER_UPSERT, tier_rows(f.rows))
    for seq, t, kind, step, epoch, data in f.events:
        row = conn.execute(
            "INSERT OR IGNORE INTO events (run_id, seq, t, kind, step, epoch, data)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING *",
            (run_id, seq, t, kind, step, epoch, dumps(data)),
        ).fetchone()
        if row is not None:
            f.changes.events.append(event_dict(row))
    run_set = f.run_set
    if f.last_logs is not None:
        run_set["last_metrics"] = dumps({k: encode_number(v) for k, v in f.last_logs.items()})
    assignments = ", ".join(["last_seq = ?", "updated_at = ?", *(f"{k} = ?" for k in run_set)])
    conn.execute(
        f"UPDATE runs SET {assignments} WHERE id = ?",
        (new_last, f.now, *run_set.values(), run_id),
    )
    # Progress alone (batch points) refreshes the run's summary at most once a second.
    if f.run_changed or ("step" in run_set and f.now - f.memo.pushed_at >= RUN_PUSH_PERIOD):
        f.changes.run = lifecycle.read_run(conn, run_id)
        f.memo.pushed_at = f.now


# -- min/max tiers ------------------------------------------------------------------


Row = tuple[int, int, float, float, "float | None"]


def tier_rows(rows: list[Row]) -> list[tuple[Any, ...]]:
    """The min/max/NaN summaries of every level for new point rows, as `tiers` rows.

    Level 1 is folded straight from the rows (the per-point hot loop); each
    higher level from the level below's summary points.
    """
    shift = downsample.SHIFT
    first: dict[tuple[int, int], list[Any]] = {}
    get = first.get
    for row in rows:
        sid, step, _epoch, _t, v = row
        key = (sid, step >> shift)
        agg = get(key)
        if agg is None:
            first[key] = [row, row, None] if v is not None else [None, None, row]
        elif v is None:
            if agg[2] is None or step < agg[2][1]:
                agg[2] = row
        elif agg[0] is None:
            agg[0] = agg[1] = row
        elif v < agg[0][4] or (v == agg[0][4] and step < agg[0][1]):
            agg[0] = row
        elif v > agg[1][4] or (v == agg[1][4] and step < agg[1][1]):
            agg[1] = row
    out: list[tuple[Any, ...]] = []
    by_series: dict[int, list[Point]] = {}
    for (sid, bucket), (lo, hi, nan) in first.items():
        out.append(_tier_row(sid, 1, bucket, *(p and Point(*p[1:]) for p in (lo, hi, nan))))
        by_series.setdefault(sid, []).extend(Point(*p[1:]) for p in (lo, hi, nan) if p)
    for sid, points in by_series.items():
        for level in range(2, downsample.LEVELS + 1):
            aggs = downsample.summarise(points, shift * level)
            points = []
            for bucket, (lo_p, hi_p, nan_p) in aggs.items():
                out.append(_tier_row(sid, level, bucket, lo_p, hi_p, nan_p))
                points.extend(p for p in (lo_p, hi_p, nan_p) if p is not None)
    return out


def _tier_row(
    sid: int, level: int, bucket: int, lo: Point | None, hi: Point | None, nan: Point | None
) -> tuple[Any, ...]:
    none4 = (None, None, None, None)
    return (sid, level, bucket, *(lo or none4), *(hi or none4), *(nan[:3] if nan else none4[:3]))
