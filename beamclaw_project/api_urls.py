"""The REST API under /api/. Each app contributes its routes from its own `api_urls` module."""

from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

urlpatterns = [
    path("schema/", SpectacularAPIView.as_view(authentication_classes=[], permission_classes=[]), name="api-schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api-schema", authentication_classes=[], permission_classes=[]), name="api-docs"),
    path("", include("tenants.api_urls")),
    path("", include("sessions.api_urls")),
    path("cron/", include("cron.api_urls")),
    path("", include("tools.api_urls")),
]
