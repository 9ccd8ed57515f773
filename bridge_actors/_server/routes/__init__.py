"""The app's routes, one blueprint per part of the API; :func:`~.app.create_app` composes them."""

from .access import access
from .device_actions import device_actions
from .extras import extras
from .monitoring import monitoring
from .recording import recording
from .sessions import sessions
from .sockets import sockets
from .viewer import viewer

BLUEPRINTS = (viewer, monitoring, sessions, extras, recording, device_actions, sockets, access)

__all__ = ["BLUEPRINTS"]
