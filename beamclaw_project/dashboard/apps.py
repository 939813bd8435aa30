from django.apps import AppConfig


class DashboardConfig(AppConfig):
    name = "beamclaw_project.dashboard"
    label = "dashboard"
    verbose_name = "Operators' dashboard"
