"""The execbox HTTP service: ``create_app(ServerSettings(...))`` or ``execbox serve``."""

from execbox.server.app import create_app
from execbox.server.settings import ServerSettings

__all__ = ["ServerSettings", "create_app"]
