"""Running one tool call on a worker, shared by the agent loop (ToolCall) and the API (ToolInvocation).

Crash safety mirrors run steps (sessions/leases.py): `bc:tool:<kind>:<id>:lease` holds `queued` while
the task waits in a queue and the worker's token (renewed by the same keeper thread) while it runs. A
call is claimed only after its lease is taken, by a conditional update from `pending` to `running`, so
a redelivered or duplicated task never runs it twice. A call found `running` without a lease lost its
worker mid-way; it is settled as failed and not run again, because exec is not idempotent (the
command may have done half its work) and a silent second run is worse than telling the model.
"""

import logging

from django.conf import settings

from sessions.events import redis_client
from sessions.leases import RunLease
from tenants.queues import tenant_queue
from tools.base import ToolContext, ToolInputError, ToolSpec, error_result, output_text, validate_call
from tools.processes import handle_node, node_alive, owner_queue

logger = logging.getLogger(__name__)

QUEUED = b"queued"
LOST_MESSAGE = (
    "the worker running this tool call stopped before it finished; it was not run again automatically "
    "(a command may have partly run). Check the workspace and retry if needed."
)


def lease_key(kind: str, object_id) -> str:
    return f"bc:tool:{kind}:{object_id}:lease"


class ToolLease(RunLease):
    """A run-step lease on another key: same acquire/renew/release semantics."""

    def __init__(self, kind: str, object_id):
        super().__init__(object_id)
        self.key = lease_key(kind, object_id)


def mark_queued(kind: str, object_id, *, only_if_free: bool = False) -> bool:
    ttl_ms = settings.CELERY_BROKER_TRANSPORT_OPTIONS["visibility_timeout"] * 1000
    return bool(redis_client().set(lease_key(kind, object_id), QUEUED, px=ttl_ms, nx=only_if_free))


def enqueue(task, *, kind: str, object_id, tenant_slug: str, tool: str, tool_input: dict, only_if_free: bool = False) -> None:
    """Send a call's task: `process` calls about a handle go to the worker owning it, the rest to the
    tenant's queue."""
    if not mark_queued(kind, object_id, only_if_free=only_if_free):
        return
    queue = owner_queue(tool_input) if tool == "process" else None
    task.apply_async(args=[str(object_id)], queue=queue or tenant_queue(tenant_slug))


def dead_owner_problem(tool: str, tool_input: dict, lease_value) -> str | None:
    """A `process` call queued on the direct queue of a worker that has since died waits for a consumer
    that will never come; this is the error it should settle with instead."""
    if tool != "process" or lease_value != QUEUED:
        return None
    handle = str(tool_input.get("handle", ""))
    node = handle_node(handle)
    if node is None or node_alive(node):
        return None
    return f"process {handle} ran on worker {node}, which has stopped; the process ended with it"


def execute(*, context: ToolContext, spec: ToolSpec, tool_input) -> dict:
    """Run a tool and always return a result dict with `ok` (errors included, never raised)."""
    try:
        validate_call(spec, tool_input)
        result = spec.run(context, tool_input)
    except ToolInputError as exc:
        return error_result(f"invalid input: {exc}")
    except Exception as exc:  # noqa: BLE001 - a tool bug becomes an error result, not a stuck run
        logger.exception("tool %s failed", spec.name)
        return error_result(f"{spec.name} failed unexpectedly: {exc.__class__.__name__}: {exc}")
    if not isinstance(result, dict) or "ok" not in result:
        return error_result(f"{spec.name} returned an unexpected result")
    return _storable(result)


def _storable(value):
    """Postgres JSON cannot hold NUL characters, which command output may contain."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {key: _storable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_storable(item) for item in value]
    return value


def render_result(spec: ToolSpec | None, result: dict) -> str:
    """The tool_result text for the model; never empty (the API rejects empty text blocks)."""
    if spec is not None:
        text = spec.render(result)
    elif result.get("ok"):
        text = output_text(result.get("output", ""))
    else:
        text = f"Error: {result.get('error') or output_text(result.get('output')) or 'the tool failed'}"
    return text if text.strip() else "(no output)"
