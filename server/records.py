"""Records received on `/ws/train`, checked on the event loop before they are stored.

Each record is checked against the protocol (`server.protocol`): its type,
its numbers and its names. The common case (a batch or epoch record of plain
numbers) is checked in one test; anything else field by field, with a message
naming the record's `seq`, the field and the value received.
"""

from __future__ import annotations

import math
from typing import Any

from server.errors import BadRequest
from server.protocol import (
    COMMAND_STATUSES,
    ENDED,
    KNOB_TYPES,
    MAX_INT,
    MAX_KNOBS,
    MAX_NAME,
    MAX_REASON,
    RECORD_TYPES,
    STATE_EVENT,
    decode_number,
    has_surrogate,
    json_problem,
)

__all__ = ["validate_records"]

FLOAT_ONLY = frozenset({float})
RUN_END_STATUSES = frozenset(ENDED)


def _fail(rec: dict[str, Any], message: str) -> BadRequest:
    return BadRequest(f"Record {_show(rec.get('seq'))}: {message}")


def _show(value: object, limit: int = 60) -> str:
    """`repr(value)` cut to `limit` characters, for messages (lone surrogates come escaped)."""
    try:
        text = repr(value)
    except ValueError:  # an int of more than 4300 digits
        return "<a huge integer>"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _number(rec: dict[str, Any], name: str, *, optional: bool = False) -> float | None:
    value = rec.get(name)
    if value is None and optional:
        return None
    out = decode_number(value)
    if out is None or not math.isfinite(out):
        raise _fail(rec, f"{name!r} must be a finite number, got {_show(value)}.")
    return out


def _int(rec: dict[str, Any], name: str, *, optional: bool = False) -> int | None:
    value = rec.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_INT:
        raise _fail(rec, f"{name!r} must be an integer from 0 to 2**63-1, got {_show(value)}.")
    return value


def _text(rec: dict[str, Any], name: str, *, optional: bool = False) -> str | None:
    value = rec.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, str) or len(value) > MAX_NAME:
        raise _fail(rec, f"{name!r} must be a string of at most {MAX_NAME} characters.")
    if has_surrogate(value):
        raise _fail(rec, f"{name!r} holds a lone UTF-16 surrogate: {_show(value)}.")
    return value


def _free_form(rec: dict[str, Any], name: str, value: object) -> dict[str, Any]:
    """An object of any JSON within the documented limits (`server.protocol.json_problem`)."""
    if not isinstance(value, dict):
        raise _fail(rec, f"{name!r} must be an object.")
    problem = json_problem(value, name)
    if problem is not None:
        raise _fail(rec, problem)
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
    names = "".join(logs)
    if not names.isascii() and has_surrogate(names):
        key = next(k for k in logs if has_surrogate(k))
        raise _fail(rec, f"metric name {_show(key)} holds a lone UTF-16 surrogate.")
    if not FLOAT_ONLY.issuperset(map(type, logs.values())):
        for key, value in logs.items():
            number = decode_number(value)
            if number is None:
                raise _fail(rec, f"metric {_show(key)} has value {_show(value)}, not a number.")
            logs[key] = number  # the frame was parsed for us: ours to normalise
    return logs


def _state(rec: dict[str, Any], data: dict[str, Any]) -> None:
    """A `state` event: `knobs` name → {value, type}, `callbacks` a list of objects."""
    knobs, callbacks = data.get("knobs", {}), data.get("callbacks", [])
    if not isinstance(knobs, dict) or len(knobs) > MAX_KNOBS:
        raise _fail(rec, f"'data.knobs' must be an object of at most {MAX_KNOBS} knobs.")
    for name, knob in knobs.items():
        if len(name) > MAX_NAME or not isinstance(knob, dict) or knob.get("type") not in KNOB_TYPES:
            raise _fail(rec, f"knob {name[:40]!r} must be {{value, type}}, type in {KNOB_TYPES}.")
    if not isinstance(callbacks, list) or len(callbacks) > MAX_KNOBS:
        raise _fail(rec, f"'data.callbacks' must be a list of at most {MAX_KNOBS} objects.")
    if not all(isinstance(c, dict) and isinstance(c.get("name"), str) for c in callbacks):
        raise _fail(rec, "each of 'data.callbacks' must be an object with a 'name'.")


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
        raise BadRequest(f"A record needs a positive integer 'seq', got {_show(seq)}.")
    kind = rec.get("type")
    if kind not in RECORD_TYPES:
        raise _fail(rec, f"unknown type {_show(kind)}.")
    t, step, epoch = rec.get("t"), rec.get("step"), rec.get("epoch")
    if (  # the common case, a batch or epoch record of plain numbers, in one test
        kind in ("batch", "epoch")
        and type(t) is float
        and type(step) is int
        and (type(epoch) is float or (type(epoch) is int and -MAX_INT <= epoch <= MAX_INT))
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
            raise _fail(rec, f"unknown command status {_show(status)}.")
        out["status"] = status
        reason = rec.get("reason")
        out["reason"] = None if reason is None else _reason(reason)
        for name in ("epoch", "batch", "step"):
            out[name] = _int(rec, name, optional=True)
        result = rec.get("result")
        if result is not None and not isinstance(result, dict):
            raise _fail(rec, f"'result' must be an object or null, got {result!r}.")
        if result is not None:
            out["result"] = result
    elif kind == "event":
        out["kind"] = _text(rec, "kind")
        out["step"] = _int(rec, "step", optional=True)
        out["epoch"] = _number(rec, "epoch", optional=True)
        data = _free_form(rec, "data", rec.get("data", {}))
        if out["kind"] == STATE_EVENT:
            _state(rec, data)
        out["data"] = data
    elif kind == "run_start":
        out["name"] = _text(rec, "name")
        out["project"] = _text(rec, "project", optional=True)
        for name in ("params", "meta"):
            out[name] = _free_form(rec, name, rec.get(name, {}))
    elif kind == "run_end":
        status = rec.get("status")
        if status not in RUN_END_STATUSES:
            raise _fail(rec, f"run_end status must be one of {sorted(RUN_END_STATUSES)}.")
        out["status"] = status
        error = rec.get("error")
        if error is not None and not isinstance(error, dict):
            raise _fail(rec, "'error' must be an object or null.")
        out["error"] = None if error is None else _free_form(rec, "error", error)
    return out


def _reason(reason: object) -> str:
    """A command's reason as kept: text, at most MAX_REASON characters, surrogates escaped."""
    text = str(reason)[:MAX_REASON]
    if has_surrogate(text):
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text[:MAX_REASON]
