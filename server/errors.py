"""Domain errors that carry their HTTP status; one handler turns them into JSON."""

from __future__ import annotations

__all__ = ["BadRequest", "Conflict", "FitdeckError", "NotFound", "Unauthorized"]


class FitdeckError(Exception):
    """An error whose message is safe to show to the user."""

    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(FitdeckError):
    status = 400


class Unauthorized(FitdeckError):
    status = 401


class NotFound(FitdeckError):
    status = 404


class Conflict(FitdeckError):
    status = 409
