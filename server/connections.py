"""Connection hygiene: header and idle timeouts, a connection cap, room for known clients.

uvicorn's HTTP protocol (h11) has a keep-alive timeout but no header timeout: a
connection that sends half a request, or nothing, is held forever, and its
`limit_concurrency` answers 503 to everyone once such sockets fill it. Here, a
subclass of that protocol, one per server (`protocol_class`), adds:

- a header timeout: a request's line and headers must arrive within
  `header_timeout` seconds of the connection's opening (or of the first byte
  after the last answer); then 408 and the connection is closed;
- a cap on connections that have not shown the token (`max_anonymous`): every
  connection is anonymous until a request on it carries the token (with auth
  off, until it sends one). Above the cap, the oldest anonymous ones (older than
  `EVICT_AFTER` s) are closed, so trainers and dashboards, which send their token
  at once, always find room when anonymous sockets pile up;
- a cap on all connections, HTTP and WebSocket (`max_connections`, kept below
  the open-file limit): a new connection over it first makes room by closing the
  oldest anonymous one; when there is none it is answered 503 with `Retry-After`
  and closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import h11
import orjson
from starlette.requests import HTTPConnection
from uvicorn.protocols.http.h11_impl import H11Protocol

from server.auth import is_authorized

__all__ = ["FD_RESERVE", "Doorman", "open_file_room", "protocol_class"]

log = logging.getLogger("fitdeck.connections")

FD_RESERVE = 64
"""Open files kept for the database, its WAL, logs and the report workers."""
EVICT_AFTER = 3.0
"""Seconds an anonymous connection is left alone even over the anonymous cap: a
client that has just connected gets time to send its request, even to a server
too busy to read it at once (a thousand trainers reconnecting)."""
REFUSED_GRACE = 1.0
"""Seconds a refused connection has to send its request before the 503 is sent
(answering before reading it could reset the connection and hide the 503)."""
RETRY_AFTER = 2
LOG_EVERY = 10.0


def open_file_room(wanted: int) -> int:
    """How many connections the open-file limit allows, at most `wanted`; the soft
    limit is raised toward the hard one when that makes room."""
    try:
        import resource
    except ImportError:  # not POSIX: nothing to ask
        return wanted
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = wanted + FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return wanted
    room = max(1, min(wanted, soft - FD_RESERVE))
    if room < wanted:
        log.warning(
            "the open-file limit (%d) allows %d connections, not max_connections=%d; "
            "raise it with `ulimit -n`",
            soft,
            room,
            wanted,
        )
    return room


class Doorman:
    """One server's count of anonymous connections and its caps (event loop only)."""

    def __init__(
        self,
        *,
        token: str | None,
        max_connections: int,
        max_anonymous: int,
        header_timeout: float,
    ) -> None:
        self.token = token
        self.max_connections = max_connections
        self.max_anonymous = min(max_anonymous, max_connections)
        self.header_timeout = header_timeout
        self.anonymous: dict[FitdeckH11Protocol, float] = {}  # oldest first
        self.leaving: set[FitdeckH11Protocol] = set()  # closed here, not yet gone
        self._closed = {"evicted": 0, "refused": 0, "timed out": 0}
        self._logged_at = 0.0

    def admit(self, conn: FitdeckH11Protocol, total: int) -> bool:
        """A new connection (one of `total`): False when it is to be refused."""
        now = time.monotonic()
        total -= len(self.leaving)
        while len(self.anonymous) >= self.max_anonymous:
            oldest, since = next(iter(self.anonymous.items()))
            if now - since < EVICT_AFTER or not self._evict(oldest):
                break
        while total > self.max_connections:
            if not self.anonymous or not self._evict(next(iter(self.anonymous))):
                self.count("refused")
                return False
            total -= 1
        self.anonymous[conn] = now
        return True

    def known(self, conn: FitdeckH11Protocol) -> None:
        self.anonymous.pop(conn, None)

    def is_known(self, scope: Any) -> bool:
        return is_authorized(HTTPConnection(scope), self.token)

    def _evict(self, conn: FitdeckH11Protocol) -> bool:
        self.anonymous.pop(conn, None)
        if conn.transport is None or conn.transport.is_closing():
            return True  # already on its way out: room all the same
        self.leaving.add(conn)
        conn.transport.abort()  # no lingering: the point is to free the socket now
        self.count("evicted")
        return True

    def count(self, what: str) -> None:
        """Say what was closed, at most every `LOG_EVERY` s (a flood writes no flood)."""
        self._closed[what] += 1
        now = time.monotonic()
        if now - self._logged_at >= LOG_EVERY:
            self._logged_at = now
            closed = ", ".join(f"{n} {what}" for what, n in self._closed.items() if n)
            log.warning(
                "connections closed: %s (max_connections=%d, max_anonymous_connections=%d, "
                "header_timeout=%gs)",
                closed,
                self.max_connections,
                self.max_anonymous,
                self.header_timeout,
            )
            self._closed = dict.fromkeys(self._closed, 0)


def _plain_response(status: int, reason: str, message: str, *extra: str) -> bytes:
    body = orjson.dumps({"error": {"status": status, "message": message}})
    head = [
        f"HTTP/1.1 {status} {reason}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        "connection: close",
        *extra,
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def _timed_out(seconds: float) -> bytes:
    return _plain_response(
        408, "Request Timeout", f"The request's headers did not arrive within {seconds:g} s."
    )


def _refused(cap: int) -> bytes:
    return _plain_response(
        503,
        "Service Unavailable",
        f"The server has its maximum of {cap} connections open; retry in {RETRY_AFTER} s.",
        f"retry-after: {RETRY_AFTER}",
    )


class FitdeckH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the header timeout and the caps of `doorman`."""

    doorman: Doorman

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._refusal: asyncio.TimerHandle | None = None
        self._seen_scope: Any = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if not self.doorman.admit(self, len(self.connections)):
            # Read the request first, then answer: closing with it unread would reset
            # the connection and the client would never see why.
            self._refusal = self.loop.call_later(REFUSED_GRACE, self._refuse)
            return
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        if self._refusal is not None:
            self._refuse()
            return
        super().data_received(data)
        if self.transport.get_protocol() is not self:  # upgraded to a WebSocket
            self._done_here()
            return
        if self.scope is not self._seen_scope:  # a new request's headers arrived
            self._seen_scope = self.scope
            if self in self.doorman.anonymous and self.doorman.is_known(self.scope):
                self.doorman.known(self)
        if self.conn.their_state is h11.IDLE:  # (part of) a next request, or nothing yet
            if self._header_timer is None and not self.transport.is_closing():
                self._arm_header_timer()
        else:
            self._cancel_header_timer()

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        if self.doorman.is_known(self.scope):
            self.doorman.known(self)
        self._done_here()
        super().handle_websocket_upgrade(event)

    def connection_lost(self, exc: Exception | None) -> None:
        self._done_here()
        super().connection_lost(exc)

    def _done_here(self) -> None:
        """This protocol no longer speaks for the connection (closed or upgraded)."""
        self._cancel_header_timer()
        if self._refusal is not None:
            self._refusal.cancel()
            self._refusal = None
        self.doorman.anonymous.pop(self, None)
        self.doorman.leaving.discard(self)

    def _arm_header_timer(self) -> None:
        self._header_timer = self.loop.call_later(
            self.doorman.header_timeout, self._header_timed_out
        )

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        self.doorman.count("timed out")
        self.transport.write(_timed_out(self.doorman.header_timeout))
        self.transport.close()

    def _refuse(self) -> None:
        if self._refusal is not None:
            self._refusal.cancel()
            self._refusal = None
        if not self.transport.is_closing():
            self.transport.write(_refused(self.doorman.max_connections))
            self.transport.close()


def protocol_class(doorman: Doorman) -> type[FitdeckH11Protocol]:
    """The HTTP protocol for one server (uvicorn builds it with fixed arguments)."""
    return type("FitdeckH11Protocol", (FitdeckH11Protocol,), {"doorman": doorman})
