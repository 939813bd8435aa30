"""The usage and fleet pages (inside the `dashboard` namespace)."""

from django.urls import path

from beamclaw_project.dashboard.fleet import fleet
from beamclaw_project.dashboard.usage import usage

urlpatterns = [
    path("usage/", usage, name="usage"),
    path("fleet/", fleet, name="fleet"),
]
