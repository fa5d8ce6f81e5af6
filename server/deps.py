"""Shared per-app state and the dependencies that hand it to routes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends
from starlette.requests import HTTPConnection

from server.auth import is_authorized
from server.errors import Unauthorized
from server.hub import Hub, TrainerLinks
from server.settings import Settings
from server.store import Store
from server.workers import Workers

__all__ = ["AppState", "Authorized", "StateDep", "get_state"]


@dataclass
class AppState:
    settings: Settings
    token: str | None
    store: Store
    hub: Hub
    trainers: TrainerLinks
    workers: Workers = field(default_factory=Workers)


def get_state(conn: HTTPConnection) -> AppState:
    state: AppState = conn.app.state.fitdeck
    return state


StateDep = Annotated[AppState, Depends(get_state)]


def require_token(conn: HTTPConnection, state: StateDep) -> None:
    if not is_authorized(conn, state.token):
        raise Unauthorized("Missing or wrong token: send 'Authorization: Bearer <token>'.")


Authorized = Depends(require_token)
