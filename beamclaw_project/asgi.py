"""ASGI entry point: HTTP goes to Django (views may stream), WebSocket to Channels consumers."""

import os
import sys
from http import HTTPStatus

from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.asgi import get_asgi_application
from twisted.web import http as twisted_http

# Daphne writes the status line from Twisted's reason table, which lacks codes we answer with (a 429 went
# out as "429 Unknown Status"); fill the gaps from Python's own table.
for _status in HTTPStatus:
    twisted_http.RESPONSES.setdefault(_status.value, _status.phrase.encode())

if "daphne.server" in sys.modules:
    # Served by Daphne (its command line imports the server before the application): oversized headers and
    # WebSocket messages get clean refusals, and WebSocket handshakes can be refused with a 404.
    from beamclaw_project import daphne_hardening

    daphne_hardening.apply()

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "beamclaw_project.settings")
# Static files (the admin's CSS and JS) are served by the app itself, so one Daphne is a whole deployment.
django_asgi_app = ASGIStaticFilesHandler(get_asgi_application())

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402  (needs Django set up)

from sessions.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": URLRouter(websocket_urlpatterns),
    }
)
