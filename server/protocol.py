"""The wire protocol, in one place: what trainers, the server and browsers say.

Both sides import this module: the server (`server.routes`, `server.hub`,
`server.ingest`) and the callback (`client_callback`). It imports neither Keras
nor FastAPI, so `fitdeck sync` and the server run on a machine without Keras.
`web/js/protocol.js` mirrors what the browser needs of it, and
`tests/test_protocol.py` fails when the two disagree.

The messages are documented in `docs/http_api.md`:

- `/ws/train`, trainer → server: `hello`, then `records` frames; server →
  trainer: `welcome`, `ack`, `command`, `commit` (multi-worker jobs), `error`,
  `storage_error`.
- `/ws/live`, browser → server: `subscribe`; server → browser: `hello`,
  `subscribed`, `run`, `run_deleted`, `metrics`, `event`, `command`, `error`,
  `storage`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import orjson
from websockets.frames import CloseCode

__all__ = [
    "COMMAND_KINDS",
    "COMMAND_STATUSES",
    "DEFAULT_URL",
    "ENDED",
    "FINAL_COMMAND",
    "HELLO_ROLES",
    "KNOB_TYPES",
    "LIVE_PATH",
    "LR_KEY",
    "MAX_COMPARE",
    "MAX_DEPTH",
    "MAX_INT",
    "MAX_KNOBS",
    "MAX_NAME",
    "MAX_SUBSCRIPTIONS",
    "MAX_WORKERS",
    "MIN_INT",
    "NONFINITE",
    "PROTOCOL_VERSION",
    "RECORD_TYPES",
    "REGEX_CHARS",
    "RUN_ID",
    "RUN_STATUSES",
    "SCOPES",
    "SETTINGS_META",
    "STATE_EVENT",
    "TRAIN_PATH",
    "Close",
    "Env",
    "FrameError",
    "Msg",
    "Rec",
    "browser_constants",
    "decode_number",
    "dumps",
    "encode_number",
    "encode_records",
    "encode_value",
    "has_surrogate",
    "json_problem",
    "jsonable",
    "load_stored",
    "loads",
    "train_ws_url",
]

PROTOCOL_VERSION: Final = 1
"""What a trainer's `hello` names; the server refuses any other."""

DEFAULT_URL: Final = "http://127.0.0.1:8000"
"""Where the callback and `fitdeck sync` look for a server when told nothing."""
TRAIN_PATH: Final = "/ws/train"
LIVE_PATH: Final = "/ws/live"


def train_ws_url(url: str) -> str:
    """`http://host:8000[/prefix]` → `ws://host:8000[/prefix]/ws/train`.

    Raises:
        ValueError: `url` is not an http(s) or ws(s) address with a host.
    """
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise ValueError(f"url must look like 'http://host:port', got {url!r}.")
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + TRAIN_PATH, "", ""))


class Env:
    """Every environment variable fitdeck reads, with what it sets."""

    URL: Final = "FITDECK_URL"
    """Callback and `fitdeck sync`: the server's address."""
    TOKEN: Final = "FITDECK_TOKEN"
    """Server: the token to require. Callback and `fitdeck sync`: the token to send."""
    HOST: Final = "FITDECK_HOST"
    """Server: interface to bind."""
    PORT: Final = "FITDECK_PORT"
    """Server: port to listen on."""
    DB: Final = "FITDECK_DB"
    """Server: SQLite file."""
    ALLOWED_HOSTS: Final = "FITDECK_ALLOWED_HOSTS"
    """Server: host names besides loopback, comma-separated."""
    FORWARDED_ALLOW_IPS: Final = "FITDECK_FORWARDED_ALLOW_IPS"
    """Server: proxies whose X-Forwarded-* headers are believed, comma-separated."""
    DISCONNECT_GRACE: Final = "FITDECK_DISCONNECT_GRACE"
    """Server: seconds a run may stay `disconnected` before it fails."""
    MAX_CONNECTIONS: Final = "FITDECK_MAX_CONNECTIONS"
    """Server: most connections open at once."""
    MAX_ANONYMOUS_CONNECTIONS: Final = "FITDECK_MAX_ANONYMOUS_CONNECTIONS"
    """Server: most connections that have not shown the token."""
    HEADER_TIMEOUT: Final = "FITDECK_HEADER_TIMEOUT"
    """Server: seconds a connection has to send a request's headers."""
    SPOOL_DIR: Final = "FITDECK_SPOOL_DIR"
    """Callback and `fitdeck sync`: where unacknowledged records are kept."""
    RUN_ID: Final = "FITDECK_RUN_ID"
    """Callback: the run to stream into (every process of a multi-worker job)."""


# -- identifiers and limits ------------------------------------------------------

RUN_ID_PATTERN: Final = "[0-9a-f]{32}"
RUN_ID: Final = re.compile(RUN_ID_PATTERN)
"""A run id: 32 lowercase hex characters (`uuid4().hex`); use `RUN_ID.fullmatch`."""

MAX_NAME: Final = 200
"""Longest run name, project, metric name, event kind or LR source (characters)."""
MAX_REASON: Final = 1000
"""Longest command `reason` kept."""
MAX_SUBSCRIPTIONS: Final = 64
"""Most runs one `/ws/live` connection may follow."""
MAX_COMPARE: Final = 50
"""Most runs one `GET /api/metrics` reads, and the compare page shows (≤ MAX_SUBSCRIPTIONS)."""
REGEX_CHARS: Final = ".^$*+?{}[]\\|()"
"""A runs filter `q` holding one of these is a regular expression, else plain text."""
MAX_INT: Final = 2**63 - 1
"""Largest integer a record may carry (what SQLite's INTEGER holds)."""
MIN_INT: Final = -(2**63)
"""Smallest integer a free-form object (`params`, `meta`, event `data`, `error`) may hold."""
MAX_DEPTH: Final = 32
"""Deepest nesting of a free-form object: the object itself is level 1, so
`{"a": {"b": 1}}` is 2 deep. Deeper ones are refused (the callback sends them as text)."""
MAX_TEXT: Final = 1000
"""Longest text the callback makes of a value it cannot send as JSON (characters)."""
MAX_WORKERS: Final = 4096
"""Most processes one multi-worker job (one run) may have."""

SCOPES: Final = ("epoch", "batch")
LR_KEY: Final = "learning_rate"
"""The batch-scope series (and epoch log) holding the learning rate."""
SETTINGS_META: Final = "settings"
"""The `run_start` meta field listing the series that are settings, not measurements:
values that hold until changed (LR_KEY always is one). The dashboard and the report
draw them as steps and never smooth them."""

RUN_STATUSES: Final = ("running", "paused", "finished", "stopped", "failed", "disconnected")
ENDED: Final = frozenset({"finished", "stopped", "failed"})
"""Run statuses after which no command can apply."""
COMMAND_KINDS: Final = ("stop", "set_lr", "checkpoint", "pause", "resume", "set")
"""`stop` (optionally with `checkpoint: true`), `set_lr`, `checkpoint`, `pause`,
`resume`, and `set` (one knob by `name` to `value`): docs/http_api.md, Commands."""
COMMAND_STATUSES: Final = ("pending", "delivered", "applied", "rejected", "expired")
"""In the order a command moves through them; it never moves back."""
FINAL_COMMAND: Final = frozenset({"applied", "rejected", "expired"})
HELLO_ROLES: Final = ("trainer", "sync")
"""Who opens a `/ws/train` connection: the run's live trainer (the default), or an
uploader of spooled records (`fitdeck sync`), which never takes the command link."""
RECORD_TYPES: Final = ("run_start", "batch", "epoch", "lr", "command", "event", "run_end")
STATE_EVENT: Final = "state"
"""The event kind whose `data` holds the run's knobs and the state of the callbacks
LiveMonitor watches (`{"knobs": {...}, "callbacks": [...]}`); the newest one is what
`GET /api/runs/{run_id}` returns as `knobs` and `callbacks`."""
KNOB_TYPES: Final = ("float", "int", "bool")
"""The `type` of a knob: what a `set` command's `value` must be."""
MAX_KNOBS: Final = 200
"""Most knobs (and most watched callbacks) one state event may carry."""


class Close:
    """WebSocket close codes fitdeck uses (the `websockets` library's names)."""

    NORMAL: Final = int(CloseCode.NORMAL_CLOSURE)
    UNSUPPORTED: Final = int(CloseCode.UNSUPPORTED_DATA)
    """A binary frame."""
    POLICY: Final = int(CloseCode.POLICY_VIOLATION)
    """Bad token, Host or Origin; a frame that breaks the protocol; rate limit."""
    TOO_BIG: Final = int(CloseCode.MESSAGE_TOO_BIG)
    TRY_AGAIN_LATER: Final = int(CloseCode.TRY_AGAIN_LATER)
    """A browser too slow to keep up: reconnect and refetch."""
    PAGE_LEFT: Final = 4000
    """Sent by the dashboard when it drops its own socket (a private-use code)."""

    REFUSALS: Final = frozenset({UNSUPPORTED, POLICY, TOO_BIG})
    """Closes a trainer must not retry: the same frames would be refused again."""


# -- the NaN / ±Infinity codec ---------------------------------------------------

NONFINITE: Final[Mapping[str, float]] = {
    "NaN": math.nan,
    "Infinity": math.inf,
    "-Infinity": -math.inf,
}
"""Strict JSON has no literal for these: every message writes them as strings."""


def encode_number(value: float | None) -> float | str:
    """A float as a strict-JSON value; `None` (how SQLite keeps NaN) is NaN."""
    if value is None:
        return "NaN"
    if math.isfinite(value):
        return value
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def encode_value(value: Any) -> float | str | None:
    """Any scalar log value (Python, NumPy or tensor) as strict JSON; `None` if not a number.

    Text is not a number, even when it spells one (`"1.5"`, `"nan"`); an integer
    too large for a float is `"Infinity"` (or `"-Infinity"`).
    """
    if isinstance(value, (str, bytes, bytearray)):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    except OverflowError:
        try:
            return "Infinity" if value > 0 else "-Infinity"
        except Exception:
            return None
    return encode_number(number)


def decode_number(value: object) -> float | None:
    """A metric value received as JSON; `None` when it is not a number at all."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float):
        return value
    if isinstance(value, int):
        try:
            return float(value)
        except OverflowError:  # 400 digits: not a value anyone logged
            return None
    if isinstance(value, str):
        return NONFINITE.get(value)
    return None


def dumps(obj: Any) -> str:
    """Compact strict JSON; raises `ValueError` on a raw NaN that slipped through."""
    return json.dumps(obj, separators=(",", ":"), allow_nan=False)


class FrameError(ValueError):
    """A frame that is not strict JSON; the message says why."""


def loads(text: str | bytes) -> Any:
    """Parse a frame: strict JSON (no bare NaN/Infinity; send the strings instead).

    orjson parses; the standard library re-reads only what orjson refused, for
    its clearer messages and for numbers like 1e999, which overflow to Infinity.

    Raises:
        FrameError: the text is not strict JSON.
    """
    try:
        return orjson.loads(text)
    except (ValueError, RecursionError):
        pass
    try:
        return json.loads(text, parse_constant=_bare_constant)
    except (ValueError, RecursionError) as exc:
        raise FrameError(f"Frame is not valid JSON: {exc}") from None


def _bare_constant(name: str) -> float:
    raise ValueError(f'bare {name} is not JSON; send the string "{name}" instead')


# -- free-form objects: what a record may hold, and what the callback makes of the rest ---


def has_surrogate(text: str) -> bool:
    """True when `text` holds a lone UTF-16 surrogate (what `os.fsdecode` makes of
    bytes that are not UTF-8): no UTF-8 encoder, SQLite's included, can write it."""
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def json_problem(value: Any, where: str, depth: int = 1) -> str | None:
    """Why a parsed JSON value cannot be stored and served again, or `None`.

    The limits of free-form objects (`params`, `meta`, event `data`, run_end
    `error`): containers nested at most MAX_DEPTH deep, text and keys without
    lone surrogates, integers from MIN_INT to MAX_INT, floats finite (`1e999`
    parses as Infinity; send the string "Infinity" instead). `where` names the
    value in the message (`params`), which then names the offending part
    (`params['lr'][1]`).
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str):
        return f"{where} holds a lone UTF-16 surrogate." if has_surrogate(value) else None
    if isinstance(value, int):
        if MIN_INT <= value <= MAX_INT:
            return None
        return f"{where} is an integer beyond 64 bits (from -2**63 to 2**63-1)."
    if isinstance(value, float):
        if math.isfinite(value):
            return None
        return f'{where} is {value!r}; write the string "{encode_number(value)}" instead.'
    if isinstance(value, (dict, list)):
        if depth > MAX_DEPTH:
            return f"{where} is nested deeper than {MAX_DEPTH} levels."
        if isinstance(value, list):
            items: Iterable[tuple[Any, Any]] = enumerate(value)
        else:
            items = value.items()
        for key, item in items:
            if isinstance(key, str) and has_surrogate(key):
                return f"a key in {where} holds a lone UTF-16 surrogate: {key!r}."
            problem = json_problem(item, f"{where}[{key!r}]", depth + 1)
            if problem is not None:
                return problem
        return None
    return f"{where} is a {type(value).__name__}, not JSON."


def jsonable(value: Any, where: str = "value", depth: int = 1) -> tuple[Any, list[str]]:
    """A copy of `value` that `json_problem` passes, and what had to become text.

    For the callback, whose params and meta come from user code: numbers,
    text, lists and dicts stay (NumPy scalars become numbers, non-finite
    floats the strings "NaN"/"Infinity"/"-Infinity", keys text); what JSON or
    the server cannot hold becomes text: integers beyond 64 bits, lone
    surrogates (escaped as `\\udcff`), objects, containers nested deeper than
    MAX_DEPTH. Never raises.

    Returns:
        The copy, and one line per value made text (`params['big']: int beyond 64 bits`).
    """
    problems: list[str] = []
    return _jsonable(value, where, depth, problems), problems


def _jsonable(value: Any, where: str, depth: int, problems: list[str]) -> Any:
    if value is None or isinstance(value, bool):
        return bool(value) if value is not None else None
    if isinstance(value, str):
        if has_surrogate(value):
            problems.append(f"{where}: text with a lone surrogate")
            return _escaped(value)
        return str(value)
    if isinstance(value, int):
        if MIN_INT <= value <= MAX_INT:
            return int(value)
        problems.append(f"{where}: an integer beyond 64 bits")
        return _as_text(value)
    if isinstance(value, float):
        return encode_number(value)
    if isinstance(value, (Mapping, list, tuple)):
        if depth > MAX_DEPTH:
            problems.append(f"{where}: nested deeper than {MAX_DEPTH} levels")
            return _as_text(value)
        if isinstance(value, Mapping):
            out: dict[str, Any] = {}
            for key, item in list(value.items()):
                name = _jsonable(key, f"a key in {where}", depth, problems)
                if not isinstance(name, str):
                    name = _as_text(name) if name is not None else "null"
                out[name] = _jsonable(item, f"{where}[{key!r}]", depth + 1, problems)
            return out
        return [_jsonable(v, f"{where}[{i}]", depth + 1, problems) for i, v in enumerate(value)]
    if getattr(value, "size", None) == 1 and callable(getattr(value, "item", None)):
        try:  # a NumPy scalar (or one-element array): its Python number
            inner = value.item()
        except Exception:
            inner = value
        if isinstance(inner, (bool, int, float, str)):
            return _jsonable(inner, where, depth, problems)
    problems.append(f"{where}: a value of type {type(value).__name__}")
    return _as_text(value)


def _escaped(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _as_text(value: Any) -> str:
    try:
        text = str(value)
    except Exception:  # a broken __str__, or an int of more than 4300 digits
        bits = value.bit_length() if isinstance(value, int) else None
        text = f"<int of {bits} bits>" if bits else f"<{type(value).__name__}>"
    text = _escaped(text) if has_surrogate(text) else text
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def load_stored(text: str) -> Any:
    """A free-form object as the database keeps it (JSON text), ready to serve.

    A run stored by a fitdeck older than these limits may hold a lone surrogate
    (kept escaped, `\\udcff`) or nest hundreds of levels deep; such a value
    comes back as `jsonable` makes it, so one old run cannot break the routes
    that list it. Anything else is parsed as it is.
    """
    value = json.loads(text)
    if "\\ud" in text or "\\uD" in text or text.count("[") + text.count("{") > 3 * MAX_DEPTH:
        value = jsonable(value, "stored")[0]
    return value


def encode_records(records: list[dict[str, Any]], *, clean: bool = False) -> bytes:
    """A `records` frame as UTF-8 JSON, whatever the records hold.

    orjson writes the common case; a record it refuses (an integer beyond 64
    bits, a lone surrogate, an object) is sent as `jsonable` makes it, so one
    odd value cannot stop a stream. `clean=True` passes every record through
    `jsonable` first (`fitdeck sync`: a spool written by an older callback may
    hold what orjson writes and the server still refuses, such as 2**63).
    """
    if not clean:
        try:
            return orjson.dumps(Msg.records(records))
        except TypeError:  # orjson.JSONEncodeError
            pass
    return orjson.dumps(Msg.records([jsonable(r, "record", depth=0)[0] for r in records]))


# -- messages ----------------------------------------------------------------------


class Msg:
    """Builders for every message, one per type (the `type` field's value).

    Each returns the message as a dict; send it with `dumps`.
    """

    # /ws/train
    @staticmethod
    def hello(
        run_id: str, role: str | None = None, worker: Mapping[str, int] | None = None
    ) -> dict[str, Any]:
        """Trainer → server, first frame: which run this connection streams, and
        (`role`, see HELLO_ROLES) who streams it; none is the live trainer. In a
        multi-worker job, which worker of how many (`{"index": 1, "count": 2}`)."""
        hello: dict[str, Any] = {"type": "hello", "protocol": PROTOCOL_VERSION, "run_id": run_id}
        if role is not None:
            hello["role"] = role
        if worker is not None:
            hello["worker"] = {"index": worker["index"], "count": worker["count"]}
        return hello

    @staticmethod
    def records(records: list[dict[str, Any]]) -> dict[str, Any]:
        """Trainer → server: numbered records (see RECORD_TYPES)."""
        return {"type": "records", "records": records}

    @staticmethod
    def welcome(run_id: str, last_seq: int) -> dict[str, Any]:
        """Server → trainer: the highest `seq` already stored for the run."""
        return {"type": "welcome", "run_id": run_id, "last_seq": last_seq}

    @staticmethod
    def ack(seq: int) -> dict[str, Any]:
        """Server → trainer: every record up to `seq` is stored (or refused)."""
        return {"type": "ack", "seq": seq}

    @staticmethod
    def command(command: Mapping[str, Any], run_id: str | None = None) -> dict[str, Any]:
        """Server → trainer (`run_id` None): a command to apply, its wire fields only.
        Server → browser (with `run_id`): a command and its current status."""
        if run_id is None:  # the body's own fields: `lr`, and the kind's `args`
            fields = {**(command.get("args") or {}), "id": command["id"],
                      "kind": command["kind"], "lr": command["lr"]}  # fmt: skip
            return {"type": "command", "command": fields}
        return {"type": "command", "run_id": run_id, "command": dict(command)}

    @staticmethod
    def commit(command_id: int, at_step: int) -> dict[str, Any]:
        """Server → every worker of a multi-worker job: apply the command at the batch
        boundary where `at_step` steps have run (the same step on every worker)."""
        return {"type": "commit", "id": command_id, "at_step": at_step}

    @staticmethod
    def error(message: str) -> dict[str, Any]:
        """Server → trainer or browser: a frame or record was refused, and why."""
        return {"type": "error", "message": message}

    @staticmethod
    def storage_error(message: str) -> dict[str, Any]:
        """Server → trainer: records cannot be stored now; nothing unstored is acked.
        The server then closes with 1013: keep the records and resend after a backoff."""
        return {"type": "storage_error", "message": message}

    # /ws/live
    @staticmethod
    def subscribe(run_ids: Iterable[str]) -> dict[str, Any]:
        """Browser → server: follow these runs (replaces the previous set)."""
        return {"type": "subscribe", "run_ids": list(run_ids)}

    @staticmethod
    def live_hello(time: float, storage: str | None = None) -> dict[str, Any]:
        """Server → browser, first message: the server's clock and its storage's health
        (`storage`: why writes fail, None while they succeed)."""
        return {"type": "hello", "time": time, "storage": Msg.storage(storage)["storage"]}

    @staticmethod
    def storage(reason: str | None) -> dict[str, Any]:
        """Server → every browser: writes began to fail (`reason`) or work again (None)."""
        status = "ok" if reason is None else "degraded"
        return {"type": "storage", "storage": {"status": status, "reason": reason}}

    @staticmethod
    def subscribed(run_ids: Iterable[str]) -> dict[str, Any]:
        """Server → browser: from now on every change of these runs is pushed."""
        return {"type": "subscribed", "run_ids": sorted(run_ids)}

    @staticmethod
    def run(run: Mapping[str, Any]) -> dict[str, Any]:
        """Server → every browser: a run's summary changed."""
        return {"type": "run", "run": dict(run)}

    @staticmethod
    def run_deleted(run_id: str) -> dict[str, Any]:
        """Server → every browser: a run is gone."""
        return {"type": "run_deleted", "run_id": run_id}

    @staticmethod
    def metrics(run_id: str, scope: str, points: list[dict[str, Any]]) -> dict[str, Any]:
        """Server → browsers following the run: new points of one scope."""
        return {"type": "metrics", "run_id": run_id, "scope": scope, "points": points}

    @staticmethod
    def event(run_id: str, event: Mapping[str, Any]) -> dict[str, Any]:
        """Server → browsers following the run: a new event."""
        return {"type": "event", "run_id": run_id, "event": dict(event)}


class Rec:
    """Builders for the records a `records` frame carries (`seq` is added when sent).

    `t` is wall time; `step` the global step; `epoch` the 0-based epoch (batch
    records and LR changes: epoch progress, `e + (b + 1) / steps_per_epoch`).
    """

    @staticmethod
    def run_start(
        t: float, name: str, project: str | None, params: dict[str, Any], meta: dict[str, Any]
    ) -> dict[str, Any]:
        return {"type": "run_start", "t": t, "name": name, "project": project,
                "params": params, "meta": meta}  # fmt: skip

    @staticmethod
    def metrics(
        scope: str, t: float, step: int, epoch: float, logs: dict[str, float | str]
    ) -> dict[str, Any]:
        """A `batch` or `epoch` record (`scope`)."""
        return {"type": scope, "t": t, "step": step, "epoch": epoch, "logs": logs}

    @staticmethod
    def lr(
        t: float,
        step: int,
        epoch: float,
        lr: float,
        previous: float | None,
        source: str,
        command_id: int | None = None,
    ) -> dict[str, Any]:
        """The learning rate from `step` on; `previous` None for the first reading."""
        record = {"type": "lr", "t": t, "step": step, "epoch": epoch, "lr": encode_value(lr),
                  "previous": encode_value(previous), "source": source}  # fmt: skip
        if command_id is not None:
            record["command_id"] = command_id
        return record

    @staticmethod
    def command(
        t: float,
        command_id: Any,
        status: str,
        reason: str | None = None,
        *,
        epoch: int | None = None,
        batch: int | None = None,
        step: int | None = None,
        result: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A command's new status (see COMMAND_STATUSES), where it applied, and its
        outcome (`result`: e.g. path/bytes/step of a checkpoint, old/new of a `set`)."""
        record = {"type": "command", "t": t, "id": command_id, "status": status,
                  "reason": reason, "epoch": epoch, "batch": batch, "step": step}  # fmt: skip
        if result is not None:
            record["result"] = result
        return record

    @staticmethod
    def event(
        t: float, kind: str, data: dict[str, Any], step: int | None = None,
        epoch: float | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        return {"type": "event", "t": t, "kind": kind, "step": step, "epoch": epoch,
                "data": data}  # fmt: skip

    @staticmethod
    def state(
        t: float, knobs: dict[str, Any], callbacks: list[dict[str, Any]], step: int | None = None,
        epoch: float | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """The run's knobs and its watched callbacks' state: an event of kind STATE_EVENT."""
        return Rec.event(t, STATE_EVENT, {"knobs": knobs, "callbacks": callbacks}, step, epoch)

    @staticmethod
    def run_end(t: float, status: str, error: dict[str, str] | None) -> dict[str, Any]:
        """The fit ended: `finished`, `stopped` or `failed` (with the error)."""
        return {"type": "run_end", "t": t, "status": status, "error": error}


TRAIN_MESSAGES: Final = (
    "hello",
    "records",
    "welcome",
    "ack",
    "command",
    "commit",
    "error",
    "storage_error",
)
LIVE_MESSAGES: Final = (
    "subscribe",
    "hello",
    "subscribed",
    "run",
    "run_deleted",
    "metrics",
    "event",
    "command",
    "error",
    "storage",
)
MESSAGE_TYPES: Final = tuple(dict.fromkeys((*TRAIN_MESSAGES, *LIVE_MESSAGES)))
"""Every `type` a message can have, on either WebSocket."""


def browser_constants() -> dict[str, Any]:
    """What `web/js/protocol.js` must hold, by its exported names."""
    return {
        "RUN_ID_PATTERN": RUN_ID_PATTERN,
        "MAX_NAME": MAX_NAME,
        "MAX_SUBSCRIPTIONS": MAX_SUBSCRIPTIONS,
        "MAX_COMPARE": MAX_COMPARE,
        "REGEX_CHARS": REGEX_CHARS,
        "LR_KEY": LR_KEY,
        "SETTINGS_META": SETTINGS_META,
        "STATE_EVENT": STATE_EVENT,
        "KNOB_TYPES": list(KNOB_TYPES),
        "SCOPES": list(SCOPES),
        "RUN_STATUSES": list(RUN_STATUSES),
        "ENDED": sorted(ENDED),
        "COMMAND_KINDS": list(COMMAND_KINDS),
        "COMMAND_STATUSES": list(COMMAND_STATUSES),
        "FINAL_COMMAND": sorted(FINAL_COMMAND),
        "LIVE_MESSAGES": list(LIVE_MESSAGES),
        "CLOSE": {
            "NORMAL": Close.NORMAL,
            "POLICY": Close.POLICY,
            "TOO_BIG": Close.TOO_BIG,
            "UNSUPPORTED": Close.UNSUPPORTED,
            "TRY_AGAIN_LATER": Close.TRY_AGAIN_LATER,
            "PAGE_LEFT": Close.PAGE_LEFT,
        },
        "NON_FINITE": sorted(NONFINITE),
    }
