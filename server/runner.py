"""Run the app under uvicorn with fitdeck's settings, and say where to find it."""

from __future__ import annotations

import logging
import sys

import uvicorn

from server.app import create_app
from server.settings import Settings

__all__ = ["dashboard_url", "serve", "uvicorn_config"]

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
    server = uvicorn.Server(config)
    token = config.app.state.fitdeck.token
    if token is None:
        log.warning(
            "auth is OFF (--no-auth): anyone who can reach %s may steer training", settings.host
        )
    print(
        f"fitdeck serving {settings.db} — open {dashboard_url(settings, token)}",
        file=sys.stderr,
        flush=True,
    )
    server.run()
