"""Run the app under uvicorn with fitdeck's settings, and say where to find it.

The port is bound here, before anything is printed: a busy port is one clear
sentence and exit status 1, never a dashboard URL that leads to someone else's
server, nor uvicorn's traceback. uvicorn then serves on that very socket. While
it serves, a discovery file (`server.discovery`) tells callbacks on this
machine the URL and the token; it goes away when the server stops.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path

import uvicorn

from server import discovery
from server.app import create_app
from server.settings import Settings

__all__ = [
    "FitdeckServer",
    "app_token",
    "bind_problem",
    "dashboard_url",
    "listen_socket",
    "serve",
    "server_url",
    "uvicorn_config",
]

log = logging.getLogger("fitdeck")


def server_url(settings: Settings, port: int | None = None) -> str:
    """The base URL a client on this machine uses: `http://127.0.0.1:8000`."""
    host = settings.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.port if port is None else port}"


def dashboard_url(settings: Settings, token: str | None, port: int | None = None) -> str:
    """The URL to open in a browser, carrying the token when there is one."""
    url = server_url(settings, port) + "/"
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
        # X-Forwarded-* believed only from the proxies named (uvicorn trusts loopback).
        proxy_headers=bool(settings.forwarded_allow_ips),
        forwarded_allow_ips=list(settings.forwarded_allow_ips) or None,
        log_level="warning",
        lifespan="on",
    )


def app_token(config: uvicorn.Config) -> str | None:
    """The token the app built by `uvicorn_config` checks (None with --no-auth)."""
    token: str | None = config.app.state.fitdeck.token  # type: ignore[union-attr]
    return token


def listen_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to `host:port` (port 0: any free one), as uvicorn binds it.

    Raises:
        OSError: the address is in use, not this machine's, or not allowed.
    """
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if os.name == "posix":  # restart at once after a stop (TIME_WAIT), as uvicorn does
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def bind_problem(settings: Settings, exc: OSError) -> str:
    """What went wrong binding `settings.host:port`, and what to do: one sentence."""
    host, port = settings.host, settings.port
    if exc.errno == errno.EADDRINUSE:
        running = discovery.find_server(server_url(settings), on_problem=log.debug)
        if running is not None:
            who = f"fitdeck (pid {running.pid}, database {running.db}) already serves there"
        else:
            who = "another program (or another fitdeck) already listens there"
        free = _free_port_near(host, port)
        hint = f"--port {free}" if free is not None else "--port 0 (any free port)"
        return f"port {port} on {host} is busy: {who}. Choose another with {hint}."
    if exc.errno == errno.EACCES:
        return (
            f"not allowed to listen on port {port} ({exc.strerror}; ports below 1024 need "
            "root). Choose another with --port, e.g. --port 8000."
        )
    if isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL:
        return (
            f"cannot listen on {host!r}: {exc.strerror or exc}. Check --host (FITDECK_HOST); "
            "127.0.0.1 keeps the server on this machine."
        )
    return f"cannot listen on {host}:{port} ({exc}). Choose another --port or --host."


def _free_port_near(host: str, port: int) -> int | None:
    for candidate in range(port + 1, min(port + 20, 65536)) if port else ():
        try:
            listen_socket(host, candidate).close()
        except OSError:
            continue
        return candidate
    return None


class FitdeckServer(uvicorn.Server):
    """A uvicorn server that keeps a discovery file while it accepts connections.

    The file is written once the app has started and removed when shutdown
    begins, in uvicorn's own shutdown: a signal-driven exit (Ctrl-C, SIGTERM),
    which uvicorn re-raises after shutting down, removes it too.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        settings: Settings,
        port: int,
        on_started: Callable[[], None] = lambda: None,
    ) -> None:
        super().__init__(config)
        self.settings = settings
        self.port = port
        self.token = app_token(config)
        self.on_started = on_started
        self.discovery_file: Path | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and not self.should_exit:
            url = server_url(self.settings, self.port)
            self.discovery_file = discovery.publish(url, self.token, self.port, self.settings.db)
            self.on_started()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.forget()
        await super().shutdown(sockets)

    def forget(self) -> None:
        """Remove the discovery file (again harmless)."""
        discovery.unpublish(self.discovery_file)
        self.discovery_file = None


def serve(settings: Settings) -> int:
    """Serve until stopped; the exit status (1: the server could not start)."""
    try:
        sock = listen_socket(settings.host, settings.port)
    except OSError as exc:
        print(f"fitdeck serve: {bind_problem(settings, exc)}", file=sys.stderr, flush=True)
        return 1
    port = int(sock.getsockname()[1])
    try:
        config = uvicorn_config(settings)
        url = dashboard_url(settings, app_token(config), port)

        def say_where() -> None:
            print(f"fitdeck serving {settings.db}: open {url}", file=sys.stderr, flush=True)

        server = FitdeckServer(config, settings, port, on_started=say_where)
        try:
            server.run(sockets=[sock])
        except OSError as exc:  # uvicorn could not listen on the socket after all
            if server.started:
                raise
            print(f"fitdeck serve: {bind_problem(settings, exc)}", file=sys.stderr, flush=True)
            return 1
        except SystemExit:  # uvicorn's way to say the app did not start; it logged why
            if server.started:
                raise
        finally:
            server.forget()
    finally:
        sock.close()
    if not server.started:
        print("fitdeck serve: the server did not start (see above).", file=sys.stderr, flush=True)
        return 1
    return 0
