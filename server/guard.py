"""The ASGI middleware in front of every route: Host, Origin, WebSocket token, caps, headers.

For HTTP: the `Host` header must name this server (DNS rebinding; 400), a
state-changing request that carries an `Origin` must come from this server's
own origin (403), a body may not exceed `max_message_bytes` (413), and every
response, errors included, carries the security headers.

For WebSockets, which neither CORS nor HTTP middleware covers: the same Host
and Origin checks plus the token, each failure closing the connection with 1008
right after the handshake, before any data flows; and a token bucket per
connection (`max_frames_per_second`, `max_frame_burst`), whose overflow closes
it with 1008 "rate limit".
"""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.auth import allowed_hosts, host_allowed, is_authorized, origin_allowed
from server.errors import FitdeckError
from server.protocol import Close
from server.settings import Settings

__all__ = [
    "SECURITY_HEADERS",
    "BodyTooLarge",
    "Guard",
    "TokenBucket",
    "error_response",
    "log_safe",
]

log = logging.getLogger("fitdeck.guard")

POLICY = Close.POLICY
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
OPEN_PATHS = frozenset({"/api/health"})  # health probes may use any Host

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data: blob:; connect-src 'self'; worker-src 'self' blob:; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "same-origin",
}


class BodyTooLarge(FitdeckError):
    status = 413


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up; one per frame."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.capacity = float(max(burst, 1))
        self.tokens = self.capacity
        self.last = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class Guard:
    """Pure ASGI middleware (it must see WebSockets too); see the module docstring."""

    def __init__(self, app: ASGIApp, settings: Settings, token: str | None) -> None:
        self.app = app
        self.settings = settings
        self.token = token
        self.hosts = allowed_hosts(settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    # -- HTTP ------------------------------------------------------------------

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                MutableHeaders(scope=message).update(SECURITY_HEADERS)
            await send(message)

        refusal = self._refuse_http(scope)
        if refusal is not None:
            status, message = refusal
            log.info("refused %s %s: %s", scope["method"], log_safe(scope["path"]), message)
            await error_response(status, message)(scope, receive, send_with_headers)
            return

        limit = self.settings.max_message_bytes
        received = 0

        async def capped_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(f"The request body is over the limit of {limit} bytes.")
            return message

        try:
            await self.app(scope, capped_receive, send_with_headers)
        except BodyTooLarge as exc:  # read outside a route's error handling
            if not started:
                await error_response(exc.status, exc.message)(scope, receive, send_with_headers)
        except Exception:
            if not started:  # the 500 carries the headers too; the error is still logged
                await error_response(500, "Internal server error.")(
                    scope, receive, send_with_headers
                )
            raise

    def _refuse_http(self, scope: Scope) -> tuple[int, str] | None:
        headers = Headers(scope=scope)
        if scope["path"] not in OPEN_PATHS and not self._host_allowed(scope, headers):
            return 400, _host_message(headers)
        conn = HTTPConnection(scope)
        if scope["method"] not in SAFE_METHODS and not origin_allowed(conn):
            origin = headers.get("origin", "")[:100]
            return 403, f"Cross-origin request refused: Origin {origin!r} is not this server."
        length = headers.get("content-length")
        limit = self.settings.max_message_bytes
        if length is not None and (not length.isdigit() or int(length) > limit):
            return 413, f"The request body is over the limit of {limit} bytes."
        return None

    # -- WebSocket -------------------------------------------------------------

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        reason = self._refuse_websocket(scope)
        if reason is not None:
            log.info("refused a WebSocket on %s: %s", log_safe(scope["path"]), reason)
            if (await receive())["type"] == "websocket.connect":
                # Accept, then close: the client sees the code and the reason,
                # and no data has flowed.
                await send({"type": "websocket.accept"})
                await send({"type": "websocket.close", "code": POLICY, "reason": reason})
            return

        bucket = TokenBucket(self.settings.max_frames_per_second, self.settings.max_frame_burst)
        closed = False

        async def limited_receive() -> Message:
            nonlocal closed
            message = await receive()
            if message["type"] == "websocket.receive" and not bucket.take():
                closed = True
                rate = self.settings.max_frames_per_second
                path = log_safe(scope["path"])
                log.warning("closing a WebSocket on %s: over %g frames/s", path, rate)
                await send(
                    {
                        "type": "websocket.close",
                        "code": POLICY,
                        "reason": f"rate limit: {rate:g} frames/s",
                    }
                )
                return {"type": "websocket.disconnect", "code": POLICY}
            return message

        async def guarded_send(message: Message) -> None:
            if closed and message["type"] in ("websocket.send", "websocket.close"):
                return  # the connection is already closed for the rate limit
            await send(message)

        await self.app(scope, limited_receive, guarded_send)

    def _refuse_websocket(self, scope: Scope) -> str | None:
        conn = HTTPConnection(scope)
        if not self._host_allowed(scope, conn.headers):
            return "Host not allowed."
        if not origin_allowed(conn):
            return "Origin not allowed."
        if not is_authorized(conn, self.token):
            return "Missing or wrong token."
        return None

    def _host_allowed(self, scope: Scope, headers: Headers) -> bool:
        return host_allowed(headers, self.hosts)


def log_safe(text: str, limit: int = 200) -> str:
    """`text` for one log line: control and other unprintable characters escaped
    (a path with `%0A` cannot forge a line), at most `limit` characters kept."""
    if len(text) > limit:
        text = text[:limit] + "…"
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def _host_message(headers: Headers) -> str:
    host = headers.get("host", "")[:100]
    return (
        f"Host {host!r} is not one this server answers to (DNS rebinding guard);"
        " allow it with --allowed-host or FITDECK_ALLOWED_HOSTS."
    )


def error_response(status: int, message: str) -> JSONResponse:
    body: dict[str, Any] = {"error": {"status": status, "message": message}}
    return JSONResponse(body, status_code=status)
