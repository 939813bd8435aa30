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

The tasks every run sends (its steps, tool calls) go out through `task_send`: the message Celery's
`send_task` writes, written straight onto the queue's Redis list.
"""

import base64
import inspect
import json
import logging
import threading
import uuid
from collections.abc import Iterable

from celery import Task, current_app
from celery.signals import before_task_publish
from celery.utils.nodenames import anon_nodename
from django.conf import settings

from beamclaw_project.infra.log_context import log_context_bind, log_context_reset, log_context_restore
from beamclaw_project.infra.queues import tenant_of_queue
from beamclaw_project.infra.redis import Command

logger = logging.getLogger(__name__)

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
        _task_modules_import()
        task = current_app.tasks.get(name)
    parameters = list(inspect.signature(task.run).parameters) if task is not None else []
    labels = _labels[name] = tuple(p.removesuffix("_id") for p in parameters)
    return labels


def _task_modules_import() -> None:
    global _modules_imported
    with _modules_lock:
        if not _modules_imported:
            current_app.loader.import_default_modules()
            _modules_imported = True


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


# --- sending ----------------------------------------------------------------------------------------

_ORIGIN = anon_nodename()
_NO_CALLBACKS = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def task_send(name: str, args: list, *, queue: str, priority: int = 0) -> None:
    """Send a task by name, as `current_app.send_task(name, args=args, queue=queue, priority=priority)`
    would: the same message (Celery's protocol 2, labelled as above) on the same Redis list.

    Celery's own path runs the router, merges the task's options, copies and declares the queue and
    exchange, asks Redis which queues the exchange is bound to (a round trip) and only then pushes: about
    0.7 ms per message, on the path of every run's first token. A tenant's queue is a Redis list of its own
    name (the worker declares the queues it consumes), so the message is pushed there directly.
    tests/test_task_send.py holds it to what send_task writes."""
    with current_app.pool.acquire(block=True) as connection:
        connection.default_channel.message_put(queue, _task_message(name, args, queue=queue, priority=priority))


def tasks_push_commands(tasks: list[tuple]) -> list[Command] | None:
    """The Redis commands with which tasks_send would push each (name, args, queue, priority[, headers]), to send
    with other commands to redis_client()'s database in one round trip (infra/redis.redis_scripts_call), or None
    when the broker is another database (CELERY_BROKER_URL set apart from REDIS_URL): then use tasks_send."""
    if settings.CELERY_BROKER_URL != settings.REDIS_URL or settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("global_keyprefix"):
        return None
    with current_app.pool.acquire(block=True) as connection:
        channel = connection.default_channel
        return [command for name, args, queue, priority, *headers in tasks
                for command in channel.message_put_commands(
                    queue, _task_message(name, args, queue=queue, priority=priority, more_headers=headers))]


def tasks_send(tasks: list[tuple]) -> None:
    """task_send for each (name, args, queue, priority[, headers]), in one round trip. `headers`: more headers of
    the message, which the task reads from its request (`self.request`) and a worker that knows none ignores."""
    if not tasks:
        return
    messages = [(queue, _task_message(name, args, queue=queue, priority=priority, more_headers=headers))
                for name, args, queue, priority, *headers in tasks]
    with current_app.pool.acquire(block=True) as connection:
        connection.default_channel.messages_put(messages)


def _task_message(name: str, args: list, *, queue: str, priority: int, more_headers: Iterable[dict | None] = ()) -> dict:
    task_id = str(uuid.uuid4())
    parent = current_app.current_worker_task
    parent_id = parent.request.id if parent else None
    root_id = (parent.request.root_id or parent_id) if parent else task_id
    headers = {
        "lang": "py", "task": name, "id": task_id, "shadow": None, "eta": None, "expires": None, "group": None,
        "group_index": None, "retries": 0, "timelimit": [None, None], "root_id": root_id, "parent_id": parent_id,
        "argsrepr": task_label(name=name, routing_key=queue, args=args, kwargs={}), "kwargsrepr": "",
        "origin": _ORIGIN, "ignore_result": None, "replaced_task_nesting": 0, "stamped_headers": None, "stamps": {},
    }
    for more in more_headers:
        headers.update(more or {})
    body = json.dumps([list(args), {}, _NO_CALLBACKS]).encode()
    return {
        "body": base64.b64encode(body).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": headers,
        "properties": {
            "correlation_id": task_id,
            "reply_to": current_app.thread_oid,
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": priority,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }


def task_sending_warm_up() -> None:
    """Set up what a process's first message would: the task modules (their parameter names label the
    messages) and Celery's task registry now, and a broker connection with its channel on the side (without
    delaying the start while Redis is down). A web process calls it as it starts: they took ~70 ms of the
    first request after `make run`, and the registry (the app's finalize, on first use) ~20 ms more."""
    _task_modules_import()
    current_app.tasks  # noqa: B018 (finalizes the app)
    threading.Thread(target=_broker_connect, name="broker-warm-up", daemon=True).start()


def _broker_connect() -> None:
    try:
        with current_app.pool.acquire(block=True) as connection:
            connection.default_channel  # noqa: B018 (connects)
    except Exception as exc:  # noqa: BLE001 - the first send connects instead, or reports the outage
        logger.warning("could not connect to the broker at start-up (%r); the first task sent connects", exc)
