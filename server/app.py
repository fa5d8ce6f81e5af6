"""`create_app(settings)`: wires storage, live fan-out, routes and security headers."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from server import lifecycle, models, workers
from server.auth import is_authorized, resolve_token
from server.deps import AppState
from server.errors import FitdeckError
from server.guard import SECURITY_HEADERS, Guard, error_response
from server.hub import Hub, TrainerLinks
from server.lifecycle import Changes
from server.routes import api, live_ws, remote_monitor, train_ws, web
from server.settings import Settings
from server.store import Store

__all__ = ["OPEN_PREFIXES", "SECURITY_HEADERS", "create_app"]

OPEN_PREFIXES = ("/static/",)
"""Besides `/api/health` and `/`: what a browser without the token may fetch (the
sign-in page's files), so a missing file there is a 404 even without a token."""
OPEN_ROUTES = frozenset({"/", "/api/health"})
UNAUTHORIZED = "Missing or wrong token: send 'Authorization: Bearer <token>'."


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    store = Store(settings.db)
    state = AppState(
        settings=settings,
        token=resolve_token(settings),
        store=store,
        hub=Hub(settings.live_queue_size),
        trainers=TrainerLinks(),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()

        def on_health(reason: str | None) -> None:  # on the writer thread
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                loop.call_soon_threadsafe(state.hub.storage, reason)

        store.on_health = on_health
        store.open()
        reaper = asyncio.create_task(close_lost_runs(state, remote_runs))
        try:
            yield
        finally:
            reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reaper
            store.close()

    app = FastAPI(
        title="fitdeck", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None
    )
    app.state.fitdeck = state
    remote_runs = remote_monitor.RemoteRuns()
    app.state.remote_monitor = remote_runs

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Unknown paths and methods get the documented shape, and without the
        # token a 401 first: what exists is no business of a caller without it.
        path = request.url.path
        is_open = path in OPEN_ROUTES or path.startswith(OPEN_PREFIXES)
        if (
            exc.status_code in (404, 405)
            and not is_open
            and not is_authorized(request, state.token)
        ):
            return error_response(401, UNAUTHORIZED)
        if exc.status_code == 404:
            message = f"No such path: {request.method} {path[:200]}."
        elif exc.status_code == 405:
            message = f"Method {request.method} is not allowed on {path[:200]}."
        else:
            message = str(exc.detail)
        response = error_response(exc.status_code, message)
        response.headers.update(exc.headers or {})
        return response

    @app.exception_handler(FitdeckError)
    async def fitdeck_error(request: Request, exc: FitdeckError) -> JSONResponse:
        return error_response(exc.status, exc.message)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        # "Bad value for body.lr: Input should be greater than 0. Received 0." (400),
        # or 404 for a run id that cannot exist, as the lookup would answer.
        return error_response(*models.validation_error(exc.errors()))

    # Host, Origin, WebSocket token and rate, body size, security headers.
    app.add_middleware(Guard, settings=settings, token=state.token)

    app.include_router(api.health_router)
    app.include_router(api.router)
    app.include_router(remote_monitor.router)
    app.include_router(train_ws.router)
    app.include_router(live_ws.router)
    app.include_router(web.router)
    app.mount("/static", StaticFiles(directory=web.WEB_DIR), name="static")
    return app


def _fail_job(state: AppState, run_id: str, message: str, conn: sqlite3.Connection) -> Changes:
    return workers.fail_run(conn, state.store.memory, run_id, message)


async def close_lost_runs(state: AppState, remote_runs: remote_monitor.RemoteRuns) -> None:
    """Every so often, end runs whose trainer stayed away past the grace period, and
    RemoteMonitor runs whose source has gone quiet."""
    grace = state.settings.disconnect_grace
    while True:
        await asyncio.sleep(min(max(grace / 4, 0.05), 30.0))
        # A job's worker lost for good fails its run, named, before the run's own
        # stream (often gone with it) would fail it as LostContact.
        for run_id, worker, count in state.workers.overdue(grace):
            message = (
                f"worker {worker.index} of {count} lost contact at step {worker.step} "
                f"and did not come back within {grace:g} seconds"
            )
            changes = await state.store.write(partial(_fail_job, state, run_id, message))
            state.hub.changes(run_id, changes)
        closed = await state.store.write(
            lambda c: lifecycle.close_lost_runs(c, state.store.memory, grace)
        )
        for run_id, changes in closed:
            state.hub.changes(run_id, changes)
        await remote_monitor.end_idle_runs(remote_runs, state)
