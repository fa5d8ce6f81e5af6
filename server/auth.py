"""One token guards the server: bearer header for scripts, HttpOnly cookie for browsers."""

from __future__ import annotations

import hmac
import logging
import os
import secrets
from pathlib import Path
from urllib.parse import urlsplit

from starlette.requests import HTTPConnection

from server.settings import Settings

__all__ = ["COOKIE", "is_authorized", "origin_allowed", "resolve_token", "token_path"]

log = logging.getLogger("fitdeck.auth")

COOKIE = "fitdeck_token"


def token_path(db: Path) -> Path:
    return db.with_name(db.name + ".token")


def resolve_token(settings: Settings) -> str | None:
    """The token in force: given, or kept beside the database (made once, mode 0600)."""
    if not settings.auth:
        return None
    if settings.token:
        return settings.token
    path = token_path(settings.db)
    try:
        token = path.read_text().strip()
        if token:
            return token
    except FileNotFoundError:
        pass
    token = secrets.token_urlsafe(24)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    log.info("generated a new token in %s", path)
    return token


def presented_token(conn: HTTPConnection) -> str | None:
    header = conn.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value:
        return value.strip()
    return conn.cookies.get(COOKIE)


def is_authorized(conn: HTTPConnection, token: str | None) -> bool:
    if token is None:
        return True
    given = presented_token(conn)
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


def origin_allowed(conn: HTTPConnection) -> bool:
    """No Origin (a script) or exactly this server's own origin (same scheme, host, port)."""
    origin = conn.headers.get("origin")
    if origin is None:
        return True
    host = conn.headers.get("host", "")
    scheme = "https" if conn.url.scheme in ("https", "wss") else "http"
    parts = urlsplit(origin)
    return parts.scheme == scheme and parts.netloc.lower() == host.lower() and not parts.path
