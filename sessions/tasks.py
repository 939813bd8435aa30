"""Thin Celery tasks: they take ids and call the engine.

Run steps are sent to the run's tenant queue (`tenant.<slug>`) by the engine; housekeeping runs on the
`system` queue. The worker runs a thread pool, where Celery cannot enforce time limits, so the provider's
own timeout (BEAMCLAW_PROVIDER_TIMEOUT_SECONDS) bounds a step instead.
"""

from celery import shared_task

from sessions import engine


@shared_task(name="sessions.run_step", acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run_step(run_id: str, step: int) -> None:
    engine.run_step(run_id=run_id, step=step)


@shared_task(name="sessions.reap_orphaned_runs", queue="system", ignore_result=True)
def reap_orphaned_runs() -> int:
    return engine.reap_orphaned_runs()
