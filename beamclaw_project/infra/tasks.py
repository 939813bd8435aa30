"""The base of every Celery task (`app.Task`), and what monitoring shows of each task.

Each task runs in a fresh log context, so nothing one task bound labels the next one's lines in the same
worker thread. It binds what the delivery says (the tenant of a tenant queue, a `run_id` or `session_id`
argument); services bind the rest when they load it (the engine its run's session, the tool runner's
owners a call's tenant, session and run).

Every message is labelled on its way out (`before_task_publish`, which sees tasks sent by name with
`send_task` as well as through `apply_async`): its `argsrepr`, what Flower and the worker's own log lines
show as the arguments, becomes `tenant=acme run=3f2c… step=2`, so an operator sees whose work it is. It
costs no query: the tenant is the queue's name, the other labels are the task's parameter names (worked
out once per task name) without their `_id`.
"""

import inspect
import threading

from celery import Task, current_app
from celery.signals import before_task_publish

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


# --- what monitoring shows ------------------------------------------------------------------------------

_LABEL_MAX_CHARS = 1024  # Celery's own cap on argsrepr
_labels: dict[str, tuple[str, ...]] = {}
_modules_lock = threading.Lock()
_modules_imported = False


def _task_labels(name: str) -> tuple[str, ...]:
    """The labels of a task's positional arguments: its parameter names, `_id` dropped."""
    if (labels := _labels.get(name)) is not None:
        return labels
    task = current_app.tasks.get(name)
    if task is None:
        # A sender names most tasks without importing them (send_task): load the task modules once.
        global _modules_imported
        with _modules_lock:
            if not _modules_imported:
                current_app.loader.import_default_modules()
                _modules_imported = True
        task = current_app.tasks.get(name)
    parameters = list(inspect.signature(task.run).parameters) if task is not None else []
    labels = _labels[name] = tuple(p.removesuffix("_id") for p in parameters)
    return labels


def task_label(*, name: str, routing_key: str, args: list | tuple, kwargs: dict) -> str:
    """`tenant=<slug> <label>=<value> …` for a task sent to `routing_key` (a queue's name)."""
    labels = _task_labels(name)
    parts = [f"tenant={tenant}"] if (tenant := tenant_of_queue(routing_key)) else []
    parts += [f"{labels[i] if i < len(labels) else f'arg{i}'}={value}" for i, value in enumerate(args)]
    parts += [f"{key.removesuffix('_id')}={value}" for key, value in kwargs.items()]
    return " ".join(parts)[:_LABEL_MAX_CHARS]


@before_task_publish.connect
def _label_message(sender=None, body=None, routing_key=None, headers=None, **extra):
    if headers is None or not isinstance(body, tuple | list) or len(body) < 2:
        return  # not a protocol 2 message: leave Celery's own repr
    args, kwargs = body[0], body[1]
    headers["argsrepr"] = task_label(name=sender, routing_key=routing_key or "", args=args, kwargs=kwargs)
    headers["kwargsrepr"] = ""
