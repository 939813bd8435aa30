"""ASGI entry point: HTTP goes to Django (views may stream), WebSocket to Channels consumers."""

import os
import sys
from http import HTTPStatus

import django
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
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
django.setup(set_prefix=False)  # as get_asgi_application() does; the handler sets the prefix per request

from beamclaw_project.gateway_handler import GatewayHandler  # noqa: E402  (needs Django set up)

# Static files (the admin's CSS and JS) are served by the app itself, so one Daphne is a whole deployment.
django_asgi_app = ASGIStaticFilesHandler(GatewayHandler())

from django.conf import settings  # noqa: E402  (needs Django set up)

from beamclaw_project.infra.log_context import daphne_access_log_to_logging  # noqa: E402

if "daphne.server" in sys.modules and settings.LOG_FORMAT == "json":
    daphne_access_log_to_logging()  # Daphne's access log as JSON lines too (docs/metrics.md)

from django.urls import get_resolver  # noqa: E402

# Import every view now rather than in the first request, which spent ~0.2 s on it (a new user's first
# request after `make run` had a 0.4 s time to first token); a URLconf that cannot load fails the start.
get_resolver().url_patterns

from beamclaw_project.infra.tasks import task_sending_warm_up  # noqa: E402

# Likewise the task modules and the broker connection the first run's step is sent with (~70 ms), and the
# database's and Redis's first connections.
task_sending_warm_up()

from beamclaw_project.infra.warm_up import connections_warm_up  # noqa: E402

connections_warm_up()

from channels.auth import AuthMiddlewareStack  # noqa: E402  (needs Django set up)
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import re_path  # noqa: E402

from beamclaw_project.dashboard.consumers import DashboardConsumer  # noqa: E402
from sessions.routing import websocket_urlpatterns  # noqa: E402

# The dashboard's socket is authenticated by the session cookie (the gateway's /ws/ by an API key).
dashboard_socket = AuthMiddlewareStack(DashboardConsumer.as_asgi())

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": URLRouter([re_path(r"^ws/dashboard/?$", dashboard_socket), *websocket_urlpatterns]),
    }
)

from beamclaw_project.infra.gc_tuning import gc_settle_after_startup  # noqa: E402

gc_settle_after_startup()  # last: what the imports above built lives as long as the process
