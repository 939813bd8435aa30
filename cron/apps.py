from django.apps import AppConfig


class CronConfig(AppConfig):
    name = "cron"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from django.conf import settings

        from beamclaw_project.infra import housekeeping
        from cron import receivers  # noqa: F401 - connects the signal receivers
        from cron.tasks import sweep_send
        from cron.tool import CRON_TOOL_SPEC
        from tools.registry import register

        register(CRON_TOOL_SPEC)
        # The sweeper's clock is the workers' housekeeping, not beat: while no beat runs (killed, being
        # deployed) due jobs still fire, SWEEP_SLACK late. Once per fleet per period; the sweep itself runs
        # as a task on the system queue, so a long one never holds up a worker's heartbeat.
        housekeeping.register(
            "cron_sweep", sweep_send, every_seconds=max(1, round(settings.BEAMCLAW_CRON["SWEEP_SECONDS"]))
        )
