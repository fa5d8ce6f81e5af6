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
    "LIVE_PATH",
    "LR_KEY",
    "MAX_NAME",
    "MAX_SUBSCRIPTIONS",
    "MAX_WORKERS",
    "NONFINITE",
    "PROTOCOL_VERSION",
    "RECORD_TYPES",
    "RUN_ID",
    "RUN_STATUSES",
    "SCOPES",
    "SETTINGS_META",
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
    "encode_value",
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
    DISCONNECT_GRACE: Final = "FITDECK_DISCONNECT_GRACE"
    """Server: seconds a run may stay `disconnected` before it fails."""
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
MAX_INT: Final = 2**63 - 1
"""Largest integer a record may carry (what SQLite's INTEGER holds)."""
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
COMMAND_KINDS: Final = ("stop", "set_lr")
COMMAND_STATUSES: Final = ("pending", "delivered", "applied", "rejected", "expired")
"""In the order a command moves through them; it never moves back."""
FINAL_COMMAND: Final = frozenset({"applied", "rejected", "expired"})
HELLO_ROLES: Final = ("trainer", "sync")
"""Who opens a `/ws/train` connection: the run's live trainer (the default), or an
uploader of spooled records (`fitdeck sync`), which never takes the command link."""
RECORD_TYPES: Final = ("run_start", "batch", "epoch", "lr", "command", "event", "run_end")


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
    """Any scalar log value (Python, NumPy or tensor) as strict JSON; `None` if not a number."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return encode_number(number)


def decode_number(value: object) -> float | None:
    """A metric value received as JSON; `None` when it is not a number at all."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
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
        if run_id is None:
            fields = {"id": command["id"], "kind": command["kind"], "lr": command["lr"]}
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
    ) -> dict[str, Any]:
        """A command's new status (see COMMAND_STATUSES), and where it applied."""
        return {"type": "command", "t": t, "id": command_id, "status": status,
                "reason": reason, "epoch": epoch, "batch": batch, "step": step}  # fmt: skip

    @staticmethod
    def event(
        t: float, kind: str, data: dict[str, Any], step: int | None = None,
        epoch: float | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        return {"type": "event", "t": t, "kind": kind, "step": step, "epoch": epoch,
                "data": data}  # fmt: skip

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
        "LR_KEY": LR_KEY,
        "SETTINGS_META": SETTINGS_META,
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
