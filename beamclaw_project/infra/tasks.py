"""The base of every Celery task (`app.Task`): each task runs in a fresh log context, so nothing one
task bound labels the next one's lines in the same worker thread. It binds what the delivery says (the
tenant of a tenant queue, a `run_id` or `session_id` argument); services bind the rest when they load
it (the engine its run's session, the tool runner's owners a call's tenant, session and run)."""

import inspect

from celery import Task

from beamclaw_project.infra.log_context import log_context_bind, log_context_reset, log_context_restore
from beamclaw_project.infra.queues import tenant_of_queue

_ID_ARGUMENTS = {"run_id": "run", "session_id": "session"}


class ContextTask(Task):
    _id_parameters: dict[str, int] | None = None  # id argument -> its position, worked out once per task

    def __call__(self, *args, **kwargs):
        token = log_context_reset()
        try:
            delivery = getattr(self.request, "delivery_info", None) or {}
            log_context_bind(tenant=tenant_of_queue(delivery.get("routing_key") or ""))
            ids = {}
            for name, position in self._id_positions().items():
                value = kwargs.get(name, args[position] if position < len(args) else None)
                ids[_ID_ARGUMENTS[name]] = value
            log_context_bind(**ids)
            return super().__call__(*args, **kwargs)
        finally:
            log_context_restore(token)

    def _id_positions(self) -> dict[str, int]:
        if self._id_parameters is None:
            names = [name for name in inspect.signature(self.run).parameters]
            self._id_parameters = {name: names.index(name) for name in _ID_ARGUMENTS if name in names}
        return self._id_parameters
