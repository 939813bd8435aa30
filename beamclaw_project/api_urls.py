"""The REST API under /api/. Each app contributes its routes from its own `api_urls` module."""

from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from beamclaw_project.api_errors import endpoint_not_found
from sessions.asyncapi import asyncapi_view

urlpatterns = [
    path("schema/", SpectacularAPIView.as_view(authentication_classes=[], permission_classes=[]), name="api-schema"),
    path("asyncapi.json", asyncapi_view, name="api-asyncapi"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api-schema", authentication_classes=[], permission_classes=[]), name="api-docs"),
    path("", include("tenants.api_urls")),
    path("", include("sessions.api_urls")),
    path("cron/", include("cron.api_urls")),
    path("channels/", include("channels_app.api_urls")),
    path("", include("tools.api_urls")),
    re_path(r"^(?P<path>.*)$", endpoint_not_found),  # last: anything unmatched is a JSON 404
]
