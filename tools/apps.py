from django.apps import AppConfig


class ToolsConfig(AppConfig):
    name = "tools"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from beamclaw_project.infra import housekeeping
        from tools import runner, services

        runner.owner_register(services.API_INVOCATIONS)
        housekeeping.register("approvals_expire", services.approvals_expire)
        housekeeping.register("tool_invocations_recover", services.invocations_reap)
        housekeeping.register("background_processes", services.processes_housekeeping)
