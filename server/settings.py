"""Server settings: one object, every field documented, filled from flags or env."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["DEFAULT_DB", "DEFAULT_HOST", "DEFAULT_PORT", "Settings"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_DB = "./fitdeck.db"


@dataclass(frozen=True)
class Settings:
    """How a fitdeck server runs.

    Every field is documented in the README ("Settings"); a test fails when one
    is not.
    """

    host: str = DEFAULT_HOST
    """Interface to bind. `127.0.0.1` keeps the server on this machine."""
    allowed_hosts: tuple[str, ...] = ()
    """Host names a request's `Host` header may carry besides the loopback ones
    (`localhost`, `127.0.0.1`, `[::1]`) and `host` when it is not a wildcard: the
    guard against DNS rebinding. `*` allows any host."""
    forwarded_allow_ips: tuple[str, ...] = ()
    """Proxies (addresses, networks, `*`) whose `X-Forwarded-For` and
    `X-Forwarded-Proto` headers are believed (uvicorn's `forwarded_allow_ips`).
    Empty: nobody's, loopback included; name your TLS proxy here."""
    port: int = DEFAULT_PORT
    """TCP port to listen on."""
    db: Path = field(default_factory=lambda: Path(DEFAULT_DB))
    """SQLite database file; created when missing. Runs survive restarts."""
    token: str | None = None
    """Token every client must present. `None` with auth on: one is generated
    and kept beside the database in `<db>.token` (mode 0600)."""
    auth: bool = True
    """`False` (`--no-auth`) lets anyone who can reach the port in."""
    max_message_bytes: int = 1 << 20
    """Largest WebSocket frame accepted (close 1009 above) and largest HTTP request
    body (413 above)."""
    max_keys_per_record: int = 256
    """Most metrics one batch or epoch record may carry."""
    max_frames_per_second: float = 1000.0
    """Frames per second one WebSocket connection may send, on average."""
    max_frame_burst: int = 2000
    """Frames one WebSocket connection may send in a burst above that rate; the
    next one closes it with 1008 "rate limit"."""
    live_queue_size: int = 512
    """Messages queued for one browser before it is dropped as too slow."""
    ping_interval: float = 5.0
    """Seconds between WebSocket pings to the trainer."""
    ping_timeout: float = 10.0
    """Seconds without a pong before a trainer's link is declared dead."""
    disconnect_grace: float = 600.0
    """Seconds a run may stay `disconnected` before it is closed as `failed`
    (error type `LostContact`); its unfinished commands expire then."""
    # -- connections (server.connections) --
    max_connections: int = 2048
    """Most connections open at once, HTTP and WebSocket (kept below the open-file
    limit, which is raised toward its hard limit when needed). A connection over it
    closes the oldest anonymous one to make room, or is answered 503."""
    max_anonymous_connections: int = 256
    """Most connections that have not shown the token yet (with auth off: not sent a
    request yet). Above it the oldest of them (over 3 s old) are closed, so trainers
    and dashboards, which show it at once, always find room."""
    header_timeout: float = 10.0
    """Seconds a connection has to send a request's line and headers, from its
    opening or its first byte after the last answer; then 408 and closed."""
    keep_alive_timeout: float = 5.0
    """Seconds an idle keep-alive connection is kept between two requests."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Settings from `FITDECK_*` variables, then explicit overrides (flags).

        Empty variables count as unset; a variable whose flag was given is not read.

        Raises:
            ValueError: a variable that is read holds a bad value.
        """
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        for name, var, parse in _ENV:
            raw = env.get(var, "").strip()
            if raw and overrides.get(name) is None:
                try:
                    values[name] = parse(raw)
                except ValueError:
                    raise ValueError(f"{var} must be {_ENV_HELP[var]}, got {raw!r}.") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]


def _hosts(raw: str) -> tuple[str, ...]:
    hosts = tuple(h.strip() for h in raw.split(",") if h.strip())
    if not hosts:
        raise ValueError(raw)
    return hosts


def _port(raw: str) -> int:
    port = int(raw)
    if not 0 <= port <= 65535:
        raise ValueError(raw)
    return port


_ENV: list[tuple[str, str, Callable[[str], object]]] = [
    ("host", "FITDECK_HOST", str),
    ("port", "FITDECK_PORT", _port),
    ("db", "FITDECK_DB", Path),
    ("token", "FITDECK_TOKEN", str),
    ("disconnect_grace", "FITDECK_DISCONNECT_GRACE", float),
    ("allowed_hosts", "FITDECK_ALLOWED_HOSTS", _hosts),
    ("max_connections", "FITDECK_MAX_CONNECTIONS", int),
    ("max_anonymous_connections", "FITDECK_MAX_ANONYMOUS_CONNECTIONS", int),
    ("header_timeout", "FITDECK_HEADER_TIMEOUT", float),
    ("forwarded_allow_ips", "FITDECK_FORWARDED_ALLOW_IPS", _hosts),
]
_ENV_HELP = {
    "FITDECK_HOST": "a host name or address",
    "FITDECK_PORT": "a port number (0-65535)",
    "FITDECK_DB": "a file path",
    "FITDECK_TOKEN": "a token",
    "FITDECK_DISCONNECT_GRACE": "a number of seconds",
    "FITDECK_ALLOWED_HOSTS": "host names separated by commas",
    "FITDECK_MAX_CONNECTIONS": "a number of connections",
    "FITDECK_MAX_ANONYMOUS_CONNECTIONS": "a number of connections",
    "FITDECK_HEADER_TIMEOUT": "a number of seconds",
    "FITDECK_FORWARDED_ALLOW_IPS": "addresses or networks separated by commas",
}
