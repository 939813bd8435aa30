"""Thin Celery tasks for tools; they take ids and call tools.loop / tools.services.

Queues: the sender picks the tenant's queue (`tenant.<slug>`), or for `process` calls about a
background process the owning worker's direct queue (`<node>.dq2`). Limits: the worker's thread pool
cannot enforce Celery time limits; the tools bound themselves (exec returns after its yield window,
EXEC_YIELD_SECONDS or `yield_ms` <= 120 s, and its command is killed at its `timeout`; web_fetch stops
at WEB_FETCH_TIMEOUT_SECONDS; process poll waits <= 30 s). acks_late + reject_on_worker_lost: a task
lost with its worker is redelivered; the call's lease and status make a redelivery harmless.
"""

from celery import shared_task

from tools import loop, services


@shared_task(name="tools.run_tool", bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run_tool(self, call_id: str) -> None:
    loop.tool_call_run(call_id=int(call_id), node=self.request.hostname)


@shared_task(name="tools.run_invocation", bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run_invocation(self, invocation_id: str) -> None:
    services.invocation_run(invocation_id=invocation_id, node=self.request.hostname)
