"""Thin Celery tasks: they take ids and call the run engine.

Run steps are sent to the run's tenant queue (`tenant.<slug>`) by the engine (sessions/runs/kernel.py
sends this task by name). The worker runs a thread pool, where Celery cannot enforce time limits, so
the provider's own timeout (BEAMCLAW_PROVIDER_TIMEOUT_SECONDS) bounds a step instead.
"""

from celery import shared_task

from sessions.runs import COMPACT_TASK, FIRST_STEP_READS_HEADER, compaction_run_requested
from sessions.runs import run_step as step_run


@shared_task(name="sessions.run_step", bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run_step(self, run_id: str, step: int) -> None:
    step_run(run_id=run_id, step=step, reads=getattr(self.request, FIRST_STEP_READS_HEADER, None))


# Acknowledged on receipt (not acks_late): a manual compaction lost with its worker is not run again behind
# the back of a caller who has stopped waiting; the caller may simply ask again.
@shared_task(name=COMPACT_TASK, acks_late=False, ignore_result=True)
def compact_session(session_id: str, request_id: str) -> None:
    compaction_run_requested(session_id=session_id, request_id=request_id)
