from django.apps import AppConfig


class AgentSessionsConfig(AppConfig):
    # `sessions` is taken by django.contrib.sessions, so our app is known as agent_sessions.
    name = "sessions"
    label = "agent_sessions"
    verbose_name = "Agent sessions"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from beamclaw_project.infra import housekeeping
        from sessions import subagents
        from sessions.idempotency import idempotency_purge
        from sessions.runs import housekeeping as runs_housekeeping
        from sessions.runs import tool_phase
        from sessions.session_tools import SESSION_TOOLS
        from sessions.signals import run_finished
        from tools import registry, runner

        runner.owner_register(tool_phase.RUN_CALLS)
        for spec in SESSION_TOOLS:
            registry.register(spec)
        run_finished.connect(subagents.subagents_on_run_finished, dispatch_uid="subagents-run-finished")
        housekeeping.register("runs_reap", runs_housekeeping.reap_orphaned_runs)
        housekeeping.register("tool_calls_reap", tool_phase.tool_calls_reap)
        # Keys live 24 hours: one worker of the fleet every ten minutes is plenty.
        housekeeping.register("idempotency_purge", idempotency_purge, every_seconds=600)
        # The signal announces a child's result at once; this only catches what a killed worker dropped
        # between the run's commit and the signal. Once per fleet per period, safe on all at once anyway.
        housekeeping.register("subagents_sweep", subagents.subagents_sweep, every_seconds=10)
