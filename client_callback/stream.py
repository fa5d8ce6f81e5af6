"""The background side of LiveMonitor: one thread owns the WebSocket to the server.

The training thread only appends tuples to `Stream.buffer` (a deque: appends
are atomic, no lock). This thread turns them into numbered records, sends them
in batches, keeps every record until the server acknowledges it, resends the
unacknowledged ones after a reconnect, and hands commands to the training
thread through `Stream.inbox`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import threading
import time
import warnings
from collections import deque
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.sync.client import ClientConnection, connect

__all__ = ["BATCH", "EPOCH", "RECORD", "FitdeckWarning", "Stream", "train_ws_url"]

log = logging.getLogger("fitdeck.callback")

BATCH, EPOCH, RECORD = 0, 1, 2
SEND_CHUNK = 1000
POLL_SECONDS = 0.05
BACKOFF_START, BACKOFF_MAX = 0.5, 30.0


class FitdeckWarning(UserWarning):
    """Monitoring trouble that never stops training."""


class ProtocolRefused(Exception):
    """The server closed the stream for a reason a retry cannot fix."""


def train_ws_url(url: str) -> str:
    """`http://host:8000[/prefix]` → `ws://host:8000[/prefix]/ws/train`."""
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise ValueError(f"url must look like 'http://host:port', got {url!r}.")
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + "/ws/train", "", ""))


def encode_value(value: Any) -> float | str | None:
    """A log value as strict JSON; `None` when it is not a scalar number."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if math.isfinite(number):
        return number
    if math.isnan(number):
        return "NaN"
    return "Infinity" if number > 0 else "-Infinity"


class Stream:
    """Records of one run, on their way to the server."""

    def __init__(
        self,
        url: str,
        run_id: str,
        token: str | None,
        *,
        max_buffer: int,
        connect_timeout: float,
        ping_timeout: float,
    ) -> None:
        self.ws_url = train_ws_url(url)
        self.run_id = run_id
        self.token = token
        self.max_buffer = max_buffer
        self.connect_timeout = connect_timeout
        self.ping_timeout = ping_timeout
        self.buffer: deque[tuple[Any, ...]] = deque()
        self.inbox: deque[dict[str, Any]] = deque()
        self.connected = False
        self.dropped = 0
        self._seq = 0
        self._steps_per_epoch: int | None = None
        self._unacked: deque[dict[str, Any]] = deque()
        self._sent_seq = 0
        self._seen_commands: set[int] = set()
        self._warned: set[str] = set()
        self._thread: threading.Thread | None = None
        self._finishing = threading.Event()
        self._wake = threading.Event()

    # -- training-thread side -------------------------------------------------

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._finishing.clear()
        self._thread = threading.Thread(target=self._run, name="fitdeck-stream", daemon=True)
        self._thread.start()

    def put(self, item: tuple[Any, ...]) -> None:
        """Queue one record (not the batch hook's path: it appends inline)."""
        if len(self.buffer) < self.max_buffer:
            self.buffer.append(item)
        else:
            self.overflow()

    def overflow(self) -> None:
        self.dropped += 1
        self.warn_once(
            "overflow",
            f"fitdeck: the send buffer is full ({self.max_buffer} records); records are being "
            "dropped until the server catches up.",
        )

    def finish(self, timeout: float) -> int:
        """Ask the thread to send what is left and stop; wait up to `timeout` seconds.

        Returns how many records are still unacknowledged.
        """
        self._finishing.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and self.connected:
            thread.join(timeout)
        return self.pending()

    def pending(self) -> int:
        return len(self.buffer) + len(self._unacked)

    def warn_once(self, key: str, message: str) -> None:
        if key in self._warned:
            log.debug("%s", message)
            return
        self._warned.add(key)
        # Never let a warnings filter set to "error" raise into fit or this thread.
        with contextlib.suppress(Exception):
            warnings.warn(message, FitdeckWarning, stacklevel=3)

    # -- stream thread ---------------------------------------------------------

    def _run(self) -> None:
        backoff = BACKOFF_START
        while True:
            try:
                with self._connect() as ws:
                    backoff = BACKOFF_START
                    if self._session(ws):
                        return
            except ProtocolRefused as exc:
                self.warn_once("refused", f"fitdeck: the server refused this run: {exc}")
                return
            except (OSError, TimeoutError, ConnectionClosed, InvalidHandshake, InvalidURI) as exc:
                self.warn_once(
                    "unreachable",
                    f"fitdeck: cannot stream to {self.ws_url} ({type(exc).__name__}: {exc}); "
                    "training goes on and records are kept to resend.",
                )
            finally:
                self.connected = False
            if self._finishing.is_set():
                return
            self._drain()
            delay = backoff * random.uniform(0.5, 1.0)
            log.info("fitdeck: reconnecting in %.1f seconds", delay)
            self._wake.wait(delay)
            self._wake.clear()
            backoff = min(backoff * 2, BACKOFF_MAX)

    def _connect(self) -> ClientConnection:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        return connect(
            self.ws_url,
            additional_headers=headers,
            open_timeout=self.connect_timeout,
            ping_interval=self.ping_timeout / 2,
            ping_timeout=self.ping_timeout,
            close_timeout=2,
            max_size=None,
            compression=None,
        )

    def _session(self, ws: ClientConnection) -> bool:
        """Stream until finished (True) or the link drops (raises)."""
        ws.send(json.dumps({"type": "hello", "protocol": 1, "run_id": self.run_id}))
        welcome = json.loads(ws.recv(timeout=self.connect_timeout))
        if welcome.get("type") != "welcome":
            raise ProtocolRefused(f"expected a welcome, got {welcome!r}")
        self._ack(int(welcome.get("last_seq", 0)))
        self._sent_seq = self._unacked[0]["seq"] - 1 if self._unacked else self._seq
        self.connected = True
        while True:
            self._drain()
            self._send_unsent(ws)
            if self._finishing.is_set() and not self._unacked and not self.buffer:
                ws.close()
                return True
            try:
                message = ws.recv(timeout=POLL_SECONDS)
            except TimeoutError:
                continue
            except ConnectionClosed as exc:
                rcvd = exc.rcvd
                if rcvd is not None and rcvd.code in (1003, 1008, 1009):
                    raise ProtocolRefused(f"{rcvd.code} {rcvd.reason}") from None
                raise
            self._handle(json.loads(message))

    def _send_unsent(self, ws: ClientConnection) -> None:
        if not self._unacked or self._unacked[-1]["seq"] <= self._sent_seq:
            return
        start = self._sent_seq - self._unacked[0]["seq"] + 1
        unsent = list(self._unacked)[max(start, 0) :]
        for i in range(0, len(unsent), SEND_CHUNK):
            chunk = unsent[i : i + SEND_CHUNK]
            ws.send(json.dumps({"type": "records", "records": chunk}, allow_nan=False))
            self._sent_seq = chunk[-1]["seq"]

    def _handle(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "ack":
            self._ack(int(message["seq"]))
        elif kind == "command":
            command = message["command"]
            if command["id"] in self._seen_commands:
                return  # resent after a reconnect; it is handled once
            self._seen_commands.add(command["id"])
            self.inbox.append(command)
            self.buffer.append((RECORD, {"type": "command", "id": command["id"],
                                         "status": "delivered", "t": time.time()}))  # fmt: skip
        elif kind == "error":
            self.warn_once("server-error", f"fitdeck: the server refused a record: {message}")

    def _ack(self, seq: int) -> None:
        while self._unacked and self._unacked[0]["seq"] <= seq:
            self._unacked.popleft()

    def _drain(self) -> None:
        """Number the queued items and move them to the unacknowledged list."""
        buffer, out = self.buffer, self._unacked
        while buffer:
            record = self._record(buffer.popleft())
            if record is not None:
                self._seq += 1
                record["seq"] = self._seq
                out.append(record)

    def _record(self, item: tuple[Any, ...]) -> dict[str, Any] | None:
        kind = item[0]
        if kind == BATCH:
            _, epoch, batch, step, t, logs = item
            spe = self._steps_per_epoch
            progress = epoch + (batch + 1) / spe if spe else epoch
            return {"type": "batch", "t": t, "step": step, "epoch": progress,
                    "logs": self._clean(logs)}  # fmt: skip
        if kind == EPOCH:
            _, epoch, step, t, logs = item
            return {"type": "epoch", "t": t, "step": step, "epoch": epoch,
                    "logs": self._clean(logs)}  # fmt: skip
        record: dict[str, Any] = item[1]
        if record["type"] == "run_start":
            self._steps_per_epoch = record["meta"].get("steps_per_epoch")
        return record

    def _clean(self, logs: dict[str, Any]) -> dict[str, float | str]:
        out: dict[str, float | str] = {}
        for key, value in logs.items():
            encoded = encode_value(value)
            if encoded is None:
                self.warn_once(
                    f"value:{key}",
                    f"fitdeck: log {key!r} is not a scalar number ({type(value).__name__}); "
                    "it is not streamed.",
                )
            else:
                out[str(key)] = encoded
        return out
