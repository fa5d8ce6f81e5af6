"""fitdeck server: stores training runs in SQLite and pushes them live to browsers."""

from server.app import create_app
from server.settings import Settings

__all__ = ["Settings", "create_app"]
