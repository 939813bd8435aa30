from django.apps import AppConfig


class CronConfig(AppConfig):
    name = "cron"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from cron import receivers  # noqa: F401 - connects the signal receivers
        from cron.tool import CRON_TOOL_SPEC
        from tools.registry import register

        register(CRON_TOOL_SPEC)
