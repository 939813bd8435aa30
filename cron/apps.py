from django.apps import AppConfig


class CronConfig(AppConfig):
    name = "cron"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from django.conf import settings

        from beamclaw_project.infra import housekeeping
        from cron import receivers  # noqa: F401 - connects the signal receivers
        from cron.tasks import sweep_start
        from cron.tool import CRON_TOOL_SPEC
        from tools.registry import register

        register(CRON_TOOL_SPEC)
        # The sweeper's clock is the workers' housekeeping, not beat: while no beat runs (killed, being
        # deployed) due jobs still fire, SWEEP_SLACK late. Once per fleet per period, on a thread of the
        # worker that wins the period: not a task, so Flower's list is not a sweep every few seconds; not on
        # the housekeeping thread, so a long sweep never holds up that worker's heartbeat (cron/tasks.py).
        housekeeping.register(
            "cron_sweep", sweep_start, every_seconds=max(1, round(settings.BEAMCLAW_CRON["SWEEP_SECONDS"]))
        )
