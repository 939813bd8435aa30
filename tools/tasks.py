"""Thin Celery tasks for tools: they take ids and hand the call to the runner (tools/runner.py), which
asks the call's owner (the run engine for `call`, tools.services for `invocation`) what to run.

Queues: the runner picks the tenant's queue (`tenant.<slug>`), or for a call a tool pins to one worker
(a `process` call about a background process) that worker's direct queue (`<node>.dq2`). Limits: the
worker's thread pool cannot enforce Celery time limits; the tools bound themselves (exec returns after
its yield window, EXEC_YIELD_SECONDS or `yield_ms` <= 120 s, and its command is killed at its
`timeout`; web_fetch stops at WEB_FETCH_TIMEOUT_SECONDS; process poll waits <= 30 s). acks_late +
reject_on_worker_lost: a task lost with its worker is redelivered; the call's lease and status make a
redelivery harmless.
"""

from celery import shared_task

from tools import runner


@shared_task(name="tools.run_tool", bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run_tool(self, call_id: str) -> None:
    runner.call_run(runner.KIND_MODEL_CALL, int(call_id), node=self.request.hostname)


@shared_task(name="tools.run_invocation", bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run_invocation(self, invocation_id: str) -> None:
    runner.call_run(runner.KIND_API_INVOCATION, invocation_id, node=self.request.hostname)
