"""Server settings: one object, every field documented, filled from flags or env."""

from __future__ import annotations

import os
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
    """Largest WebSocket frame accepted from a trainer (close 1009 above)."""
    max_keys_per_record: int = 256
    """Most metrics one batch or epoch record may carry."""
    live_queue_size: int = 512
    """Messages queued for one browser before it is dropped as too slow."""
    ping_interval: float = 5.0
    """Seconds between WebSocket pings to the trainer."""
    ping_timeout: float = 10.0
    """Seconds without a pong before a trainer's link is declared dead."""

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: object) -> Settings:
        """Settings from `FITDECK_*` variables, then explicit overrides (flags)."""
        env = dict(os.environ if env is None else env)
        values: dict[str, object] = {}
        if "FITDECK_HOST" in env:
            values["host"] = env["FITDECK_HOST"]
        if "FITDECK_PORT" in env:
            values["port"] = int(env["FITDECK_PORT"])
        if "FITDECK_DB" in env:
            values["db"] = Path(env["FITDECK_DB"])
        if env.get("FITDECK_TOKEN"):
            values["token"] = env["FITDECK_TOKEN"]
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]
