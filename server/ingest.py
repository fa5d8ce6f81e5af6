"""What the callback sends over `/ws/train`: validation, then storage on the writer thread."""

from __future__ import annotations

import json
import math
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from server import downsample
from server.downsample import Point
from server.errors import BadRequest, Conflict, NotFound
from server.jsonutil import decode_number, dumps, encode_number
from server.store import ENDED, TIER_UPSERT, command_dict, event_dict, run_dict

__all__ = [
    "Changes",
    "apply_records",
    "create_command",
    "mark_connected",
    "mark_disconnected",
    "run_state",
    "validate_records",
]

MAX_NAME = 200
RECORD_TYPES = frozenset({"run_start", "batch", "epoch", "lr", "command", "event", "run_end"})
COMMAND_STATUSES = ("pending", "delivered", "applied", "rejected", "expired")
FINAL_COMMAND = frozenset({"applied", "rejected", "expired"})
RUN_END_STATUSES = frozenset(ENDED)
RUN_PUSH_PERIOD = 1.0  # seconds
FLOAT_ONLY = frozenset({float})
MAX_INT = 2**63 - 1  # what SQLite's INTEGER holds
LR_KEY = "learning_rate"
LOST_CONTACT = "LostContact"


# -- validation (event loop side) ---------------------------------------------


def _fail(rec: dict[str, Any], message: str) -> BadRequest:
    return BadRequest(f"Record {rec.get('seq')!r}: {message}")


def _number(rec: dict[str, Any], name: str, *, optional: bool = False) -> float | None:
    value = rec.get(name)
    if value is None and optional:
        return None
    out = decode_number(value)
    if out is None or not math.isfinite(out):
        raise _fail(rec, f"{name!r} must be a finite number, got {value!r}.")
    return out


def _int(rec: dict[str, Any], name: str, *, optional: bool = False) -> int | None:
    value = rec.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_INT:
        raise _fail(rec, f"{name!r} must be an integer from 0 to 2**63-1, got {value!r}.")
    return value


def _text(rec: dict[str, Any], name: str, *, optional: bool = False) -> str | None:
    value = rec.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, str) or len(value) > MAX_NAME:
        raise _fail(rec, f"{name!r} must be a string of at most {MAX_NAME} characters.")
    return value


def _logs(rec: dict[str, Any], max_keys: int) -> dict[str, float]:
    logs = rec.get("logs")
    if not isinstance(logs, dict):
        raise _fail(rec, "'logs' must be an object of metric values.")
    if len(logs) > max_keys:
        raise _fail(rec, f"{len(logs)} metrics in one record; the limit is {max_keys}.")
    # The hot path of ingest: names short and values plain floats, checked in C.
    if max(map(len, logs), default=0) > MAX_NAME:
        key = next(k for k in logs if len(k) > MAX_NAME)
        raise _fail(rec, f"metric name longer than {MAX_NAME} characters: {key[:40]!r}…")
    if not FLOAT_ONLY.issuperset(map(type, logs.values())):
        for key, value in logs.items():
            number = decode_number(value)
            if number is None:
                raise _fail(rec, f"metric {key!r} has value {value!r}, not a number.")
            logs[key] = number  # the frame was parsed for us: ours to normalise
    return logs


def validate_records(raw: object, max_keys: int) -> tuple[list[dict[str, Any]], list[str], int]:
    """Clean records from a `records` frame, one message per record refused, and the
    highest valid `seq` seen (refused records are acknowledged too: resending them
    would not help)."""
    if not isinstance(raw, list):
        raise BadRequest("'records' must be a list.")
    good: list[dict[str, Any]] = []
    errors: list[str] = []
    top = 0
    for rec in raw:
        try:
            good.append(_validate(rec, max_keys))
            top = max(top, good[-1]["seq"])
        except BadRequest as exc:
            errors.append(exc.message)
            seq = rec.get("seq") if isinstance(rec, dict) else None
            if type(seq) is int and 1 <= seq <= MAX_INT:
                top = max(top, seq)
    return good, errors, top


def _validate(rec: object, max_keys: int) -> dict[str, Any]:
    if not isinstance(rec, dict):
        raise BadRequest(f"A record must be an object, got {type(rec).__name__}.")
    seq = rec.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or not 1 <= seq <= MAX_INT:
        raise BadRequest(f"A record needs a positive integer 'seq', got {seq!r}.")
    kind = rec.get("type")
    if kind not in RECORD_TYPES:
        raise _fail(rec, f"unknown type {kind!r}.")
    t, step, epoch = rec.get("t"), rec.get("step"), rec.get("epoch")
    if (  # the common case, a batch or epoch record of plain numbers, in one test
        kind in ("batch", "epoch")
        and type(t) is float
        and type(step) is int
        and (type(epoch) is float or type(epoch) is int)
        and math.isfinite(t + epoch)
        and 0 <= step <= MAX_INT
    ):
        logs = _logs(rec, max_keys)
        return {"seq": seq, "type": kind, "t": t, "step": step, "epoch": epoch, "logs": logs}
    t = _number(rec, "t")
    out: dict[str, Any] = {"seq": seq, "type": kind, "t": t}
    if kind in ("batch", "epoch"):
        out["step"] = _int(rec, "step")
        out["epoch"] = _number(rec, "epoch")
        out["logs"] = _logs(rec, max_keys)
    elif kind == "lr":
        out["step"] = _int(rec, "step")
        out["epoch"] = _number(rec, "epoch")
        out["lr"] = _number(rec, "lr")
        out["previous"] = _number(rec, "previous", optional=True)
        out["source"] = _text(rec, "source")
        out["command_id"] = _int(rec, "command_id", optional=True)
    elif kind == "command":
        out["id"] = _int(rec, "id")
        status = rec.get("status")
        if status not in COMMAND_STATUSES[1:]:
            raise _fail(rec, f"unknown command status {status!r}.")
        out["status"] = status
        reason = rec.get("reason")
        out["reason"] = None if reason is None else str(reason)[:1000]
        for name in ("epoch", "batch", "step"):
            out[name] = _int(rec, name, optional=True)
    elif kind == "event":
        out["kind"] = _text(rec, "kind")
        out["step"] = _int(rec, "step", optional=True)
        out["epoch"] = _number(rec, "epoch", optional=True)
        data = rec.get("data", {})
        if not isinstance(data, dict):
            raise _fail(rec, "'data' must be an object.")
        out["data"] = data
    elif kind == "run_start":
        out["name"] = _text(rec, "name")
        out["project"] = _text(rec, "project", optional=True)
        for name in ("params", "meta"):
            value = rec.get(name, {})
            if not isinstance(value, dict):
                raise _fail(rec, f"{name!r} must be an object.")
            out[name] = value
    elif kind == "run_end":
        status = rec.get("status")
        if status not in RUN_END_STATUSES:
            raise _fail(rec, f"run_end status must be one of {sorted(RUN_END_STATUSES)}.")
        out["status"] = status
        error = rec.get("error")
        if error is not None and not isinstance(error, dict):
            raise _fail(rec, "'error' must be an object or null.")
        out["error"] = error
    return out


# -- storage (writer thread side) ---------------------------------------------


@dataclass
class Changes:
    """What one stored frame changed, for the ack and the live push."""

    last_seq: int
    run: dict[str, Any] | None = None
    records: list[dict[str, Any]] = field(default_factory=list)
    """Stored `batch`, `epoch` and `lr` records: the live push builds its points from
    them, and only when a browser follows the run."""
    events: list[dict[str, Any]] = field(default_factory=list)
    commands: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _RunState:
    last_seq: int
    status: str


def run_state(conn: sqlite3.Connection, cache: dict[str, Any], run_id: str) -> _RunState | None:
    runs: dict[str, _RunState] = cache.setdefault("runs", {})
    state = runs.get(run_id)
    if state is None:
        row = conn.execute("SELECT last_seq, status FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            return None
        state = runs[run_id] = _RunState(row[0], row[1])
    return state


def _series_id(
    conn: sqlite3.Connection,
    cache: dict[tuple[str, str, str], int],
    new: dict[tuple[str, str, str], int],
    run_id: str,
    scope: str,
    key: str,
) -> int:
    k = (run_id, scope, key)
    sid = cache.get(k) or new.get(k)
    if sid is None:
        row = conn.execute(
            "SELECT id FROM series WHERE run_id = ? AND scope = ? AND key = ?", k
        ).fetchone()
        if row is None:
            sid = conn.execute(
                "INSERT INTO series (run_id, scope, key) VALUES (?, ?, ?)", k
            ).lastrowid
        else:
            sid = row[0]
        assert sid is not None
        new[k] = sid
    return sid


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


def apply_records(
    conn: sqlite3.Connection, cache: dict[str, Any], run_id: str, records: list[dict[str, Any]]
) -> Changes:
    """Store the records not stored yet (by `seq`) for one run, in one savepoint."""
    state = run_state(conn, cache, run_id)
    last_seq = state.last_seq if state else 0
    records = sorted((r for r in records if r["seq"] > last_seq), key=lambda r: r["seq"])
    changes = Changes(last_seq=last_seq)
    if not records:
        return changes
    now = time.time()
    series_cache: dict[tuple[str, str, str], int] = cache.setdefault("series", {})
    new_series: dict[tuple[str, str, str], int] = {}
    status = state.status if state else None
    exists = state is not None
    if not exists and records[0]["type"] != "run_start":
        raise BadRequest(
            f"Run {run_id!r} is unknown and record {records[0]['seq']} is not its run_start."
        )

    rows: list[Row] = []
    events: list[tuple[Any, ...]] = []
    run_set: dict[str, Any] = {}
    run_changed = False

    def sid(scope: str, key: str) -> int:
        return _series_id(conn, series_cache, new_series, run_id, scope, key)

    series_of: dict[tuple[str, ...], list[int]] = {}
    last_logs: dict[str, float] | None = None

    for rec in records:
        kind, t, seq = rec["type"], rec["t"], rec["seq"]
        if kind == "batch" or kind == "epoch":
            logs: dict[str, float] = rec["logs"]
            step, epoch = rec["step"], rec["epoch"]
            keys = (kind, *logs)  # the same metrics, record after record: look ids up once
            sids = series_of.get(keys)
            if sids is None:
                sids = series_of[keys] = [sid(kind, key) for key in logs]
            rows.extend(
                (s, step, epoch, t, None if v != v else v)  # NaN is NULL in SQLite
                for s, v in zip(sids, logs.values(), strict=True)
            )
            changes.records.append(rec)
            if kind == "batch":
                run_set["step"] = max(step, run_set.get("step", 0))
                last_logs = logs
            else:
                run_set["epoch"] = int(epoch)
                run_changed = True
        elif kind == "lr":
            lr = rec["lr"]
            rows.append((sid("batch", LR_KEY), rec["step"], rec["epoch"], t, lr))
            changes.records.append(rec)
            data = {"lr": lr, "previous": rec["previous"], "source": rec["source"]}
            if rec["command_id"] is not None:
                data["command_id"] = rec["command_id"]
            if rec["previous"] is not None:  # the first reading is a point, not a change
                events.append((seq, t, "lr_change", rec["step"], rec["epoch"], data))
            run_set["lr"] = lr
            run_changed = True
        elif kind == "command":
            cmd = _update_command(conn, run_id, rec, now)
            if cmd is not None:
                changes.commands.append(cmd)
                if cmd["status"] in FINAL_COMMAND:
                    data = {
                        "command_id": cmd["id"],
                        "kind": cmd["kind"],
                        "status": cmd["status"],
                        "reason": cmd["reason"],
                    }
                    events.append((seq, t, "command", rec["step"], rec["epoch"], data))
        elif kind == "event":
            events.append((seq, t, rec["kind"], rec["step"], rec["epoch"], rec["data"]))
        elif kind == "run_start":
            meta = dumps(rec["meta"])
            if not exists:
                conn.execute(
                    "INSERT INTO runs (id, name, project, status, created_at, updated_at,"
                    " params, meta) VALUES (?, ?, ?, 'running', ?, ?, ?, ?)",
                    (run_id, rec["name"], rec["project"], t, now, dumps(rec["params"]), meta),
                )
                exists = True
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
                        "SELECT count(*) FROM events WHERE run_id = ? AND kind = 'train_begin'",
                        (run_id,),
                    ).fetchone()[0]
                )
            status = "running"
            run_changed = True
            events.append((seq, t, "train_begin", None, None, {"fit": fit}))
        elif kind == "run_end":
            status = rec["status"]
            conn.execute(
                "UPDATE runs SET status = ?, ended_at = ?, error = ? WHERE id = ?",
                (status, t, dumps(rec["error"]) if rec["error"] else None, run_id),
            )
            changes.commands.extend(
                expire_commands(conn, run_id, f"the run {status} before it could apply", now)
            )
            events.append(
                (seq, t, "train_end", None, None, {"status": status, "error": rec["error"]})
            )
            run_changed = True

    if rows:
        conn.executemany("INSERT OR REPLACE INTO points VALUES (?, ?, ?, ?, ?)", rows)
        conn.executemany(TIER_UPSERT, tier_rows(rows))
    for seq, t, kind, step, epoch, data in events:
        cur = conn.execute(
            "INSERT OR IGNORE INTO events (run_id, seq, t, kind, step, epoch, data)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING *",
            (run_id, seq, t, kind, step, epoch, dumps(data)),
        )
        row = cur.fetchone()
        if row is not None:
            changes.events.append(event_dict(row))

    if last_logs is not None:
        run_set["last_metrics"] = {k: encode_number(v) for k, v in last_logs.items()}
    new_last = records[-1]["seq"]
    assignments = ["last_seq = ?", "updated_at = ?"]
    values: list[Any] = [new_last, now]
    for name, value in run_set.items():
        assignments.append(f"{name} = ?")
        values.append(dumps(value) if name == "last_metrics" else value)
    conn.execute(f"UPDATE runs SET {', '.join(assignments)} WHERE id = ?", (*values, run_id))
    # Progress alone (batch points) refreshes the run's summary at most once a second.
    pushed: dict[str, float] = cache.setdefault("run_pushed", {})
    if run_changed or ("step" in run_set and now - pushed.get(run_id, 0.0) >= RUN_PUSH_PERIOD):
        changes.run = _run(conn, run_id)
        pushed[run_id] = now

    # Only now that every statement succeeded may the memo learn of them.
    series_cache.update(new_series)
    cache["runs"][run_id] = _RunState(new_last, status or "running")
    changes.last_seq = new_last
    return changes


def live_points(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The `metrics` messages' points, by scope, for stored records."""
    out: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        if rec["type"] == "lr":
            scope, logs = "batch", {LR_KEY: rec["lr"]}
        else:
            scope, logs = rec["type"], {k: encode_number(v) for k, v in rec["logs"].items()}
        point = {"step": rec["step"], "epoch": rec["epoch"], "t": rec["t"], "logs": logs}
        out.setdefault(scope, []).append(point)
    return out


def _run(conn: sqlite3.Connection, run_id: str) -> dict[str, Any]:
    row = conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
    return run_dict(row)


def _update_command(
    conn: sqlite3.Connection, run_id: str, rec: dict[str, Any], now: float
) -> dict[str, Any] | None:
    row = conn.execute(
        "SELECT status FROM commands WHERE id = ? AND run_id = ?", (rec["id"], run_id)
    ).fetchone()
    if row is None:
        return None
    old, new = row[0], rec["status"]
    if old in FINAL_COMMAND or COMMAND_STATUSES.index(new) <= COMMAND_STATUSES.index(old):
        return None  # statuses only move forward; a replayed report changes nothing
    cur = conn.execute(
        "UPDATE commands SET status = ?, reason = ?, updated_at = ?, epoch = ?, batch = ?,"
        " step = ? WHERE id = ? RETURNING *",
        (new, rec["reason"], now, rec["epoch"], rec["batch"], rec["step"], rec["id"]),
    )
    return command_dict(cur.fetchone())


def expire_commands(
    conn: sqlite3.Connection, run_id: str, reason: str, now: float
) -> list[dict[str, Any]]:
    cur = conn.execute(
        "UPDATE commands SET status = 'expired', reason = ?, updated_at = ?"
        " WHERE run_id = ? AND status IN ('pending', 'delivered') RETURNING *",
        (reason, now, run_id),
    )
    return [command_dict(r) for r in cur.fetchall()]


def create_command(
    conn: sqlite3.Connection, run_id: str, kind: str, lr: float | None
) -> dict[str, Any]:
    row = conn.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
    if row is None:
        raise NotFound(f"No run with id {run_id!r}.")
    if row[0] in ENDED:
        raise Conflict(f"Run {run_id!r} has already {row[0]}; commands can no longer apply.")
    now = time.time()
    cur = conn.execute(
        "INSERT INTO commands (run_id, kind, lr, status, created_at, updated_at)"
        " VALUES (?, ?, ?, 'pending', ?, ?) RETURNING *",
        (run_id, kind, lr, now, now),
    )
    return command_dict(cur.fetchone())


def unfinished_commands(conn: sqlite3.Connection, run_id: str) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT * FROM commands WHERE run_id = ? AND status IN ('pending', 'delivered')"
        " ORDER BY id",
        (run_id,),
    ).fetchall()
    return [command_dict(r) for r in rows]


def mark_connected(conn: sqlite3.Connection, cache: dict[str, Any], run_id: str) -> Changes:
    """A trainer said hello: its run (if known) is running again.

    That includes a run closed as lost after the grace period: it was not over.
    """
    state = run_state(conn, cache, run_id)
    changes = Changes(last_seq=state.last_seq if state else 0)
    lost = state is not None and state.status == "failed" and _lost_contact(conn, run_id)
    if state is not None and (state.status == "disconnected" or lost):
        now = time.time()
        conn.execute(
            "UPDATE runs SET status = 'running', updated_at = ?, ended_at = NULL, error = NULL"
            " WHERE id = ?",
            (now, run_id),
        )
        state.status = "running"
        changes.run = _run(conn, run_id)
        changes.events.append(_server_event(conn, run_id, now, "reconnected", {}))
    return changes


def mark_disconnected(
    conn: sqlite3.Connection, cache: dict[str, Any], run_id: str, reason: str
) -> Changes:
    """A trainer's stream ended without `run_end`."""
    state = run_state(conn, cache, run_id)
    changes = Changes(last_seq=state.last_seq if state else 0)
    if state is not None and state.status == "running":
        now = time.time()
        conn.execute(
            "UPDATE runs SET status = 'disconnected', updated_at = ? WHERE id = ?", (now, run_id)
        )
        state.status = "disconnected"
        changes.run = _run(conn, run_id)
        changes.events.append(_server_event(conn, run_id, now, "disconnected", {"reason": reason}))
    return changes


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


def close_lost_runs(
    conn: sqlite3.Connection, cache: dict[str, Any], grace: float
) -> list[tuple[str, Changes]]:
    """Runs `disconnected` for more than `grace` seconds end as `failed` (LostContact)."""
    now = time.time()
    cutoff = now - grace
    out = []
    error = {
        "type": LOST_CONTACT,
        "message": f"no contact from the training process for {grace:g} seconds",
    }
    ids = [
        row[0]
        for row in conn.execute(
            "SELECT id FROM runs WHERE status = 'disconnected' AND updated_at < ?", (cutoff,)
        )
    ]
    for run_id in ids:
        conn.execute(
            "UPDATE runs SET status = 'failed', ended_at = ?, updated_at = ?, error = ?"
            " WHERE id = ?",
            (now, now, dumps(error), run_id),
        )
        state = run_state(conn, cache, run_id)
        if state is not None:
            state.status = "failed"
        changes = Changes(last_seq=state.last_seq if state else 0)
        changes.commands = expire_commands(
            conn, run_id, "the training process was lost before it could apply", now
        )
        changes.run = _run(conn, run_id)
        data = {"status": "failed", "error": error}
        changes.events.append(_server_event(conn, run_id, now, "train_end", data))
        out.append((run_id, changes))
    return out


def load_json(text: str) -> Any:
    """Parse a frame: strict JSON (no bare NaN/Infinity) plus the non-finite strings.

    orjson parses; the standard library re-reads only what orjson refused, for
    its clearer messages and for numbers like 1e999, which overflow to Infinity.
    """
    try:
        return orjson.loads(text)
    except (ValueError, RecursionError):
        pass
    try:
        return json.loads(text, parse_constant=_bare_constant)
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"Frame is not valid JSON: {exc}") from None


def _bare_constant(name: str) -> float:
    raise ValueError(f'bare {name} is not JSON; send the string "{name}" instead')
