"""Run the app under uvicorn with fitdeck's settings, and say where to find it."""

from __future__ import annotations

import logging
import sys

import uvicorn

from server.app import create_app
from server.settings import Settings

__all__ = ["app_token", "dashboard_url", "serve", "uvicorn_config"]

log = logging.getLogger("fitdeck")


def dashboard_url(settings: Settings, token: str | None, port: int | None = None) -> str:
    host = settings.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    url = f"http://{host}:{settings.port if port is None else port}/"
    return f"{url}?token={token}" if token else url


def uvicorn_config(settings: Settings) -> uvicorn.Config:
    app = create_app(settings)
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        ws_max_size=settings.max_message_bytes,
        ws_ping_interval=settings.ping_interval,
        ws_ping_timeout=settings.ping_timeout,
        log_level="warning",
        lifespan="on",
    )


def serve(settings: Settings) -> None:
    config = uvicorn_config(settings)
    token = app_token(config)
    url = dashboard_url(settings, token)
    print(f"fitdeck serving {settings.db}: open {url}", file=sys.stderr, flush=True)
    uvicorn.Server(config).run()


def app_token(config: uvicorn.Config) -> str | None:
    """The token the app built by `uvicorn_config` checks (None with --no-auth)."""
    token: str | None = config.app.state.fitdeck.token  # type: ignore[union-attr]
    return token
