"""The dashboard's pages: runs, sessions, approvals and cron (urls_core), usage and the fleet (urls_fleet)."""

from django.urls import include, path

app_name = "dashboard"

urlpatterns = [
    path("", include("beamclaw_project.dashboard.urls_core")),
    path("", include("beamclaw_project.dashboard.urls_fleet")),
]
