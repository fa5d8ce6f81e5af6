"""The background side of LiveMonitor: one thread owns the WebSocket to the server.

The training thread only appends tuples to `Stream.buffer` (a deque: appends
are atomic, no lock). This thread turns them into numbered records, sends them
in batches, keeps every record until the server acknowledges it, resends the
unacknowledged ones after a reconnect, and hands commands to the training
thread through `Stream.inbox`.

Storage trouble on the server (`storage_error`: it cannot store records now)
is not a refusal: the records stay here, unacknowledged (in memory, then in
the spool), and are resent after a backoff from the next `welcome`'s
`last_seq`, since the server acknowledges nothing it has not stored.

Warnings: one per problem and fit. The link's trouble (no server, a hung one,
a refusal) is one warning that says where the records go; the end of the fit
adds none for records left in the spool when one of those was given, and says
it all in one when none was (a fit too short to see the first connection fail).
Once `finish` has reported, this thread says nothing more for that fit.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import random
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.sync.client import ClientConnection, connect

from server import discovery
from server.protocol import (
    Close,
    Env,
    Msg,
    Rec,
    dumps,
    encode_records,
    encode_value,
    loads,
    train_ws_url,
)
from server.spool import SEND_CHUNK, Spool, default_spool_dir

__all__ = ["BATCH", "EPOCH", "RECORD", "FitdeckWarning", "Stream"]

log = logging.getLogger("fitdeck.callback")

BATCH, EPOCH, RECORD = 0, 1, 2
CHUNKS_PER_POLL = 8
FLUSH_SECONDS = 0.1  # the oldest unsent record waits at most this long for company
POLL_SECONDS = 0.05  # also the granularity of FLUSH_SECONDS
BACKOFF_START, BACKOFF_MAX = 0.5, 5.0
LINK_PROBLEMS = ("unreachable", "refused", "storage", "stream-failed")
"""Warnings that already say where unacknowledged records go."""


def _nowhere() -> int | None:
    return None


class FitdeckWarning(UserWarning):
    """Monitoring trouble that never stops training."""


class ProtocolRefused(Exception):
    """The server closed the stream for a reason a retry cannot fix."""


class StorageTrouble(Exception):
    """The server cannot store records now (`storage_error`): back off and resend."""


class Stream:
    """Records of one run, on their way to the server.

    Memory is bounded: at most `max_buffer` items wait for this thread and at
    most `memory_records` numbered records wait for an acknowledgement in
    memory; older ones are spilled to the run's spool file.
    """

    def __init__(
        self,
        url: str,
        run_id: str,
        token: str | None,
        *,
        max_buffer: int = 100_000,
        memory_records: int = 10_000,
        connect_timeout: float = 5.0,
        ping_timeout: float = 10.0,
        spool_dir: Path | None = None,
    ) -> None:
        self.ws_url = train_ws_url(url)
        self.url = url
        self.run_id = run_id
        self.token = token
        self.max_buffer = max_buffer
        self.memory_records = memory_records
        self.connect_timeout = connect_timeout
        self.ping_timeout = ping_timeout
        self.buffer: deque[tuple[Any, ...]] = deque()
        self.inbox: deque[dict[str, Any]] = deque()
        # Multi-worker jobs: which worker this is, where its training thread is
        # (steps run when it last entered a batch), and the step the server set
        # for each command (`commit` messages), written by this thread only.
        self.worker: dict[str, int] | None = None
        self.position: Callable[[], int | None] = _nowhere
        self.commits: dict[int, int] = {}
        self.connected = False
        self.dropped = 0
        self.spool = Spool(
            (spool_dir or default_spool_dir()) / f"{run_id}.jsonl",
            header={"run_id": run_id, "url": url},
        )
        self._seq = self.spool.last_seq or 0
        self._steps_per_epoch: int | None = None
        self._lock = threading.Lock()  # guards _unacked, the spool and numbering
        self._unacked: deque[dict[str, Any]] = deque()
        self._sent_seq = 0
        self._seen_commands: set[int] = set()
        self._warned: set[str] = set()
        self._warn_lock = threading.Lock()  # a warning is decided and given as one step
        self._reported = False  # `finish` has reported this fit: no more warnings for it
        self._thread: threading.Thread | None = None
        self._running = False  # the thread runs and will look at `_finishing` again
        self._state_lock = threading.Lock()  # guards _running against _finishing
        self._finishing = threading.Event()
        self._wake = threading.Event()
        self._tried = threading.Event()  # the thread's first connection attempt has ended

    # -- training-thread side -------------------------------------------------

    def start(self) -> None:
        """Begin a fit: its own warnings, and the sending thread unless it still runs."""
        with self._warn_lock:
            self._warned.clear()
            self._reported = False
        with self._state_lock:
            self._finishing.clear()
            alive = self._thread is not None and self._thread.is_alive()
            if self._running and alive:  # the last fit's thread goes on with this one
                return
            self._running = True
            self._tried.clear()
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
            "dropped until the sending thread catches up.",
        )

    def finish(self, timeout: float, *, failed: bool = False) -> int:
        """Send what is left, waiting up to `timeout` seconds while connected (and,
        for a `failed` fit, while its first connection is being made: the failure
        must reach the server; a fit that ended well never waits on a dead or hung
        server).

        Whatever the server has not acknowledged by then goes to the spool file,
        with one warning saying so unless an earlier one did. Returns how many
        records the spool holds.
        """
        self._finishing.set()
        self._wake.set()
        thread = self._thread
        deadline = time.monotonic() + timeout
        if failed and thread is not None and not self.connected:
            # A fit that raised at once: give its first attempt the time.
            self._tried.wait(timeout)
        connected = self.connected
        with self._warn_lock:  # the server answers, the stream tripped: its retry gets the time
            retrying = "stream-failed" in self._warned
        if thread is not None and (connected or retrying):
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            self._drain_locked()
            self._spill_locked(0)
            spooled = len(self.spool)
        with self._warn_lock:
            self._reported = True
            if spooled and not self._warned.intersection(LINK_PROBLEMS):
                why = (
                    f"not acknowledged within flush_timeout={timeout:g} s"
                    if connected
                    else "the server did not answer before training ended"
                )
                self._warn_locked(
                    "spooled",
                    f"fitdeck: {spooled} records did not reach {self.url} ({why}); they are "
                    f"kept in {self.spool.path}: `fitdeck sync` uploads them, and this "
                    "LiveMonitor resends them if it trains again.",
                )
        return spooled

    def pending(self) -> int:
        """Records not acknowledged yet, in memory and spooled."""
        with self._lock:
            return len(self.buffer) + len(self._unacked) + len(self.spool)

    def warn_once(self, key: str, message: str) -> None:
        """One FitdeckWarning per `key` and fit; after `finish`, only the log hears more."""
        with self._warn_lock:
            if self._reported or key in self._warned:
                log.debug("%s", message)
                return
            self._warn_locked(key, message)

    def _warn_locked(self, key: str, message: str) -> None:
        self._warned.add(key)
        # Never let a warnings filter set to "error" raise into fit or this thread.
        with contextlib.suppress(Exception):
            warnings.warn(message, FitdeckWarning, stacklevel=4)

    # -- stream thread ---------------------------------------------------------

    def _done(self) -> bool:
        """True (and the thread is to end) once `finish` was called and no fit began since."""
        with self._state_lock:
            if self._finishing.is_set():
                self._running = False
                return True
            return False

    def _run(self) -> None:
        backoff = BACKOFF_START
        last_chance = True  # a fit that ends amid an unexpected failure: one more try at once
        while True:
            refused: str | None = None
            unexpected = False
            try:
                with self._connect() as ws:
                    if self._session(ws) and self._done():
                        return
            except ProtocolRefused as exc:
                refused = str(exc)
            except StorageTrouble:
                pass  # warned once by _handle; the server closes with 1013 after it
            except ConnectionClosed as exc:
                if exc.rcvd is not None and exc.rcvd.code in Close.REFUSALS:  # retrying cannot help
                    refused = f"{exc.rcvd.code} {exc.rcvd.reason}"
                else:
                    self._warn_unreachable(exc)
            except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
                self._warn_unreachable(exc)
            except Exception as exc:  # never die silently: say so, keep the records, retry
                log.warning("fitdeck: the stream failed; retrying", exc_info=True)
                self.warn_once(
                    "stream-failed",
                    f"fitdeck: streaming to {self.ws_url} failed ({type(exc).__name__}: {exc}); "
                    "training goes on. Records are kept and resent on the next try; if training "
                    f"ends first they stay in {self.spool.path} for `fitdeck sync`.",
                )
                unexpected = True
            finally:
                if self.connected:  # welcomed: the link worked, start the backoff over
                    backoff = BACKOFF_START
                self.connected = False
                self._tried.set()
            if refused is not None:
                self._refused(refused)
            if unexpected and last_chance and self._finishing.is_set():
                last_chance = False
                continue  # `finish` waits for this try
            if self._done():
                return
            self._drain()
            delay = backoff * random.uniform(0.5, 1.0)
            log.info("fitdeck: reconnecting in %.1f seconds", delay)
            self._wake.wait(delay)
            self._wake.clear()
            backoff = min(backoff * 2, BACKOFF_MAX)

    def _warn_unreachable(self, exc: Exception) -> None:
        hint = ""
        if isinstance(exc, ConnectionRefusedError):
            hint = " No server listens there: start one with `fitdeck serve`."
        self.warn_once(
            "unreachable",
            f"fitdeck: cannot stream to {self.ws_url} ({type(exc).__name__}: {exc}); training "
            f"goes on.{hint} Records are kept and sent when the server answers; if training "
            f"ends first they stay in {self.spool.path} for `fitdeck sync`.",
        )

    def _refused(self, reason: str) -> None:
        """The server refused the stream for good: say why and how to fix it, once, then
        keep the records (bounded in memory, the rest in the spool) until `finish`."""
        if "token" in reason.lower():
            message = (
                f"fitdeck: the server at {self.url} refused the token ({reason}): pass "
                f"LiveMonitor(token=...) or set {Env.TOKEN}; `fitdeck serve` prints the "
                f"token and keeps it in {self._token_file()}."
            )
        else:
            message = f"fitdeck: the server at {self.url} refused this run ({reason})."
        self.warn_once(
            "refused",
            f"{message} Training goes on; its records are kept in {self.spool.path} "
            "for `fitdeck sync`.",
        )
        while not self._finishing.is_set():
            self._drain()
            self._wake.wait(POLL_SECONDS * 10)
            self._wake.clear()

    def _token_file(self) -> str:
        """Where the server at `url` keeps its token, as precisely as this machine knows."""
        server = discovery.find_server(self.url, on_problem=log.debug)
        if server is not None and server.db:
            return f"{server.db}.token"
        return "<db>.token beside its database"

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
            max_queue=None,
            compression=None,
        )

    def _session(self, ws: ClientConnection) -> bool:
        """Stream until everything is sent after `finish` (True) or the link drops (raises)."""
        ws.send(dumps(Msg.hello(self.run_id, worker=self.worker)))
        welcome = loads(ws.recv(timeout=self.connect_timeout))
        if welcome.get("type") == "storage_error":
            self._handle(welcome)  # raises StorageTrouble
        if welcome.get("type") != "welcome":
            raise ProtocolRefused(f"expected a welcome, got {welcome!r}")
        last_seq = int(welcome.get("last_seq", 0))
        with self._lock:
            self._ack_locked(last_seq)
            self._sent_seq = last_seq
        self.connected = True
        self._tried.set()
        while True:
            self._drain()
            more = self._send_some(ws)
            if not more and self._finishing.is_set() and not self.pending():
                ws.close()
                return True
            try:
                message = ws.recv(timeout=0 if more else POLL_SECONDS)
            except TimeoutError:
                continue
            self._handle(loads(message))

    def _send_some(self, ws: ClientConnection) -> bool:
        """Send a few chunks not sent yet; True when more are waiting."""
        for _ in range(CHUNKS_PER_POLL):
            chunk = self._next_chunk()
            if not chunk:
                return False
            ws.send(encode_records(chunk), text=True)
            self._sent_seq = chunk[-1]["seq"]
        return True

    def _next_chunk(self) -> list[dict[str, Any]]:
        with self._lock:
            after = self._sent_seq
            if self.spool.last_seq is not None and self.spool.last_seq > after:
                return self.spool.read_after(after, SEND_CHUNK)
            if not self._unacked or self._unacked[-1]["seq"] <= after:
                return []
            start = max(0, after - self._unacked[0]["seq"] + 1)
            # Coalesce like Nagle: a frame costs the server far more than a record.
            if (
                len(self._unacked) - start < SEND_CHUNK
                and time.time() - self._unacked[start]["t"] < FLUSH_SECONDS
                and not self._finishing.is_set()
            ):
                return []
            return list(itertools.islice(self._unacked, start, start + SEND_CHUNK))

    def _handle(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "ack":
            with self._lock:
                self._ack_locked(int(message["seq"]))
        elif kind == "command":
            command = message["command"]
            if command["id"] in self._seen_commands:
                return  # resent after a reconnect; it is handled once
            self._seen_commands.add(command["id"])
            self.inbox.append(command)
            # Read after the append: the training thread has not passed this step
            # without seeing the command (a multi-worker job holds there for a commit).
            step = self.position()
            if step is not None:
                command["seen_at"] = step
            delivered = Rec.command(time.time(), command["id"], "delivered", step=step)
            self.buffer.append((RECORD, delivered))
        elif kind == "commit":
            self.commits[int(message["id"])] = int(message["at_step"])
        elif kind == "error":
            self.warn_once("server-error", f"fitdeck: the server refused a record: {message}")
        elif kind == "storage_error":
            self.warn_once(
                "storage",
                f"fitdeck: the server at {self.url} cannot store records right now "
                f"({message.get('message')}); training goes on. Its records are kept and sent "
                "again when the server can store them; if training ends first they stay in "
                f"{self.spool.path} for `fitdeck sync`.",
            )
            raise StorageTrouble(str(message.get("message")))

    def _ack_locked(self, seq: int) -> None:
        while self._unacked and self._unacked[0]["seq"] <= seq:
            self._unacked.popleft()
        self.spool.drop_through(seq)

    def _drain(self) -> None:
        with self._lock:
            self._drain_locked()
            if len(self._unacked) > self.memory_records:
                self._spill_locked(self.memory_records // 2)

    def _drain_locked(self) -> None:
        """Number the queued items and move them to the unacknowledged list."""
        buffer, out = self.buffer, self._unacked
        while buffer:
            record = self._record(buffer.popleft())
            if record is not None:
                self._seq += 1
                record["seq"] = self._seq
                out.append(record)

    def _spill_locked(self, keep: int) -> None:
        """Move the oldest unacknowledged records to the spool until `keep` remain."""
        n = len(self._unacked) - keep
        if n <= 0:
            return
        oldest = [self._unacked[i] for i in range(n)]
        try:
            self.spool.append(oldest)
        except OSError as exc:
            self.warn_once(
                "spool",
                f"fitdeck: cannot write the spool file {self.spool.path} ({exc}); "
                "unsent records stay in memory only.",
            )
            return
        for _ in range(n):
            self._unacked.popleft()

    def _record(self, item: tuple[Any, ...]) -> dict[str, Any] | None:
        kind = item[0]
        if kind == BATCH:
            _, epoch, batch, step, t, logs = item
            spe = self._steps_per_epoch
            progress = epoch + (batch + 1) / spe if spe else epoch
            return Rec.metrics("batch", t, step, progress, self._clean(logs))
        if kind == EPOCH:
            _, epoch, step, t, logs = item
            return Rec.metrics("epoch", t, step, epoch, self._clean(logs))
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
