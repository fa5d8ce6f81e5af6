"""One token guards the server: bearer header for scripts, HttpOnly cookie for browsers.

Beside the token, two checks keep web pages the user happens to visit away from
the server (see README, "Security"): the `Host` header must name this server
(DNS rebinding), and a browser's `Origin`, when it sends one, must be this
server's own origin (cross-site requests, which CORS never checks on WebSockets).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from starlette.requests import HTTPConnection

from server.settings import Settings

__all__ = [
    "COOKIE",
    "LOOPBACK_NAMES",
    "allowed_hosts",
    "host_allowed",
    "is_authorized",
    "is_loopback",
    "origin_allowed",
    "resolve_token",
    "token_matches",
    "token_path",
]

log = logging.getLogger("fitdeck.auth")

COOKIE = "fitdeck_token"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "*"})
SHORT_TOKEN = 16


def token_path(db: Path) -> Path:
    return db.with_name(db.name + ".token")


def resolve_token(settings: Settings) -> str | None:
    """The token in force: given, or kept beside the database (made once, mode 0600)."""
    if not settings.auth:
        return None
    if settings.token:
        if len(settings.token) < SHORT_TOKEN:
            log.warning(
                "the token has only %d characters; a generated one has 32", len(settings.token)
            )
        return settings.token
    path = token_path(settings.db)
    token = _read_token(path)
    if token is not None:
        return token
    token = secrets.token_urlsafe(24)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another server on the same database made it first
        return _read_token(path) or token
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    log.info("generated a new token in %s", path)
    return token


def _read_token(path: Path) -> str | None:
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        return None
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("%s was readable by others (mode %o); made it 0600", path, mode)
        path.chmod(0o600)
    return token or None


def presented_token(conn: HTTPConnection) -> str | None:
    header = conn.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value:
        return value.strip()
    return conn.cookies.get(COOKIE)


def token_matches(given: str | None, token: str) -> bool:
    """Constant-time comparison, so response times say nothing about the token."""
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


def is_authorized(conn: HTTPConnection, token: str | None) -> bool:
    if token is None:
        return True
    return token_matches(presented_token(conn), token)


# -- Host and Origin -----------------------------------------------------------


def is_loopback(host: str) -> bool:
    """`localhost` or a loopback address (127.0.0.0/8, ::1)."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def allowed_hosts(settings: Settings) -> frozenset[str] | None:
    """Host names the `Host` header may carry; `None` when any is allowed (`*`)."""
    extra = {h.strip().strip("[]").lower() for h in settings.allowed_hosts}
    if "*" in extra:
        return None
    names = {*LOOPBACK_NAMES, *extra}
    if settings.host not in WILDCARD_HOSTS:
        names.add(settings.host.strip("[]").lower())
    return frozenset(names - {""})


def host_name(value: str) -> str | None:
    """The name in a `Host` header (`name`, `name:port`, `[v6]:port`), lowercase."""
    value = value.strip().lower()
    if value.startswith("["):
        name, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not (rest[0] == ":" and rest[1:].isdigit())):
            return None
        return name
    name, colon, port = value.partition(":")
    if colon and not port.isdigit():
        return None
    return name or None


def host_allowed(headers: Mapping[str, str], allowed: frozenset[str] | None) -> bool:
    if allowed is None:
        return True
    name = host_name(headers.get("host", ""))
    return name is not None and (name in allowed or is_loopback(name))


def origin_allowed(conn: HTTPConnection) -> bool:
    """No Origin (a script, not a browser) or exactly this server's own origin.

    `null` (sandboxed frames, `file:` pages) and look-alikes such as
    `http://localhost.evil.test` are refused. The scheme may be http or https
    (behind a TLS proxy); host and port must equal the `Host` header.
    """
    return origin_matches(conn.headers.get("origin"), conn.headers.get("host", ""))


def origin_matches(origin: str | None, host: str) -> bool:
    if origin is None:
        return True
    try:
        parts = urlsplit(origin)
        parts.port  # noqa: B018  (raises on a malformed port)
    except ValueError:
        return False
    return (
        parts.scheme in ("http", "https")
        and bool(host)
        and parts.netloc.lower() == host.strip().lower()
        and "@" not in parts.netloc
        and not (parts.path or parts.query or parts.fragment)
    )
