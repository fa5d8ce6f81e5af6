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
    "TokenFileError",
    "allowed_hosts",
    "host_allowed",
    "is_authorized",
    "is_loopback",
    "make_private",
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


class TokenFileError(RuntimeError):
    """The token file beside the database is not this user's alone; the message says why."""


def token_path(db: Path) -> Path:
    return db.with_name(db.name + ".token")


def resolve_token(settings: Settings) -> str | None:
    """The token in force: given, or kept beside the database (made once, mode 0600).

    Raises:
        TokenFileError: the token file belongs to another user, or others may write it
            (a token planted by someone else would let them in).
    """
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
    if token:
        return token
    new = secrets.token_urlsafe(24)
    path.parent.mkdir(parents=True, exist_ok=True)
    if token == "":  # an empty file of ours: it gets the token in force
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    else:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another server on the same database made it first
            return _read_token(path) or new
    with os.fdopen(fd, "w") as f:
        f.write(new + "\n")
    log.info("generated a new token in %s", path)
    return new


def _read_token(path: Path) -> str | None:
    """The file's token (`""` when empty), `None` when there is no file; made 0600."""
    try:
        with path.open() as f:
            check_private(path, os.fstat(f.fileno()), "token file")
            token = f.read().strip()
    except FileNotFoundError:
        return None
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("%s was readable by others (mode %o); made it 0600", path, mode)
        path.chmod(0o600)
    return token


def check_private(path: Path, st: os.stat_result, what: str) -> None:
    """Refuse a file another user owns or may write: its content is not ours to trust.

    Raises:
        TokenFileError: with what is wrong and what to do.
    """
    uid = _uid()
    if uid is not None and st.st_uid != uid:
        raise TokenFileError(
            f"the {what} {path} belongs to uid {st.st_uid}, not to this user (uid {uid}): "
            "someone else may have planted it. Remove it (a new token is made) or pass --token."
        )
    if st.st_mode & 0o022:
        raise TokenFileError(
            f"the {what} {path} may be written by others (mode {stat.S_IMODE(st.st_mode):o}): "
            "someone else may have planted it. Remove it (a new token is made) or pass --token."
        )


def _uid() -> int | None:
    return os.geteuid() if hasattr(os, "geteuid") else None


def make_private(path: Path) -> None:
    """Create `path` empty with mode 0600 if missing, else take it to 0600 (for the
    database: SQLite gives its -wal and -shm files the database file's mode)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        return
    except FileExistsError:
        pass
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            mode = stat.S_IMODE(file.stat().st_mode)
            if mode & 0o077 and file.stat().st_uid in (_uid(), None):
                file.chmod(0o600)
                log.info("%s was open to others (mode %o); made it 0600", file, mode)
        except OSError:  # missing, or not ours to change: SQLite will say what it must
            pass


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
