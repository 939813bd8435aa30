"""The one tool-call runner: every tool call, whoever asked for it, is enqueued, claimed, run, settled
and recovered here.

A call belongs to an owner (`CallOwner`): the run engine owns the model's calls (kind `call`, rows of
ToolCall), tools.services owns the API's (kind `invocation`, rows of ToolInvocation). The owner knows
its rows and what a result means to whoever waits for it (a run's next step, an HTTP request); the
runner knows how to run any call safely, and never imports an owner.

Crash safety mirrors run steps (beamclaw_project/infra/leases.py): `bc:tool:<kind>:<id>:lease` holds
`queued` while the task waits in a queue and the worker's token while it runs. A call is claimed only
after its lease is taken, by the owner's conditional update from `pending` to `running`, so a
redelivered or duplicated task never runs it twice. A call found `running` without a lease lost its
worker mid-way; it is settled as failed and not run again, because exec is not idempotent (the command
may have done half its work) and a silent second run is worse than telling the model.

A tool may answer `Deferred`: its result comes later, from an outside event (a sub-agent finishing).
The call stays `running` with no worker holding it; its lease holds `deferred:<deadline>` instead of a
token, so recovery leaves it alone until the deadline and then settles it as timed out. Whoever has
the result calls `call_settle`.
"""

import logging
import time
from dataclasses import dataclass
from typing import Protocol

from celery import current_app
from celery.utils.nodenames import worker_direct
from django.db import close_old_connections
from django.utils import timezone
from kombu import Queue

from beamclaw_project.infra.heartbeats import node_alive
from beamclaw_project.infra.leases import (
    QUEUED,
    Lease,
    lease_mark_queued,
    lease_requeue,
    lease_values,
    leases_lost_in_transit,
)
from beamclaw_project.infra.queues import WORK_PRIORITY, tenant_queue
from beamclaw_project.infra.redis import redis_client
from beamclaw_project.infra.tasks import task_send
from sessions.models import ToolCall
from tools import registry
from tools.base import Deferred, ToolContext, ToolInputError, ToolSpec, error_result, output_text, validate_call

logger = logging.getLogger(__name__)

# The two owners' kinds (and their lease keys' middle part).
KIND_MODEL_CALL = "call"  # a model's tool_use in a run: ToolCall rows, owned by the run engine
KIND_API_INVOCATION = "invocation"  # POST /api/tools/invoke: ToolInvocation rows, owned by tools.services

LOST_MESSAGE = (
    "the worker running this tool call stopped before it finished; it was not run again automatically "
    "(a command may have partly run). Check the workspace and retry if needed."
)
DEFERRED_PREFIX = "deferred:"
# How long a deferred call's lease outlives its deadline, so recovery sees the deadline pass.
_DEFERRED_GRACE_SECONDS = 3600


@dataclass(frozen=True)
class ClaimedCall:
    """A call its owner has just moved from `pending` to `running`: what to run, for whom. `refusal`
    set means: do not run it, settle it with this error (e.g. its run was aborted meanwhile)."""

    context: ToolContext
    tool: str
    input: dict
    refusal: str | None = None


@dataclass(frozen=True)
class OpenCall:
    """A call that Postgres says is open (`pending` or `running`), as recovery needs to see it."""

    id: object
    running: bool
    tool: str
    input: dict
    tenant_slug: str


class CallOwner(Protocol):
    kind: str
    task_name: str  # the Celery task that calls `call_run(kind, id, node=...)`

    def call_claim(self, call_id, *, node: str) -> ClaimedCall | None:
        """Move the call from pending to running (conditionally) and describe it; None if it was not pending."""

    def call_record(self, call_id, result: dict) -> None:
        """Store a settled call's result and move on whatever waits for it. Idempotent."""

    def approval_lock(self, approval):
        """Inside a transaction: lock what an approval decision changes, in the owner's lock order
        (before the approval row). Returns what `approval_decided_locked` gets."""

    def approval_decided_locked(self, locked, approval) -> None:
        """The approval was decided (allowed, denied or expired): move the call on."""


_OWNERS: dict[str, CallOwner] = {}


def owner_register(owner: CallOwner) -> None:
    _OWNERS[owner.kind] = owner


def owner_of(kind: str) -> CallOwner:
    return _OWNERS[kind]


def call_claim_pending(model, call_id) -> bool:
    """The conditional update that makes a pending call (a ToolCall or a ToolInvocation row) this worker's:
    of two deliveries holding the lease one after the other, only the first finds it pending."""
    return bool(model.objects.filter(pk=call_id, status=ToolCall.Status.PENDING).update(
        status=ToolCall.Status.RUNNING, started_at=timezone.now()
    ))


def lease_key(kind: str, call_id) -> str:
    return f"bc:tool:{kind}:{call_id}:lease"


# --- enqueue, run, settle ----------------------------------------------------------------------------


def call_enqueue(kind: str, call_id, *, tenant_slug: str, tool: str, tool_input: dict, only_if_free: bool = False) -> None:
    """Send a call's task: to the worker the tool pins it to (a live one), else the tenant's queue."""
    if lease_mark_queued(lease_key(kind, call_id), only_if_free=only_if_free):
        _call_send(kind, call_id, _call_queue(tool, tool_input, tenant_slug))


def _call_queue(tool: str, tool_input: dict, tenant_slug: str) -> Queue | str:
    """The worker's direct queue (a Queue bound to its exchange, not a name) or the tenant's queue name."""
    node = _pinned_node(tool, tool_input)
    return worker_direct(node) if node and node_alive(node) else tenant_queue(tenant_slug)


def _call_send(kind: str, call_id, queue: Queue | str) -> None:
    if isinstance(queue, str):
        task_send(owner_of(kind).task_name, [str(call_id)], queue=queue, priority=WORK_PRIORITY)
    else:  # a worker's direct queue, routed by its exchange
        current_app.send_task(owner_of(kind).task_name, args=[str(call_id)], queue=queue, priority=WORK_PRIORITY)


def _pinned_node(tool: str, tool_input: dict) -> str | None:
    spec = registry.registered_tools().get(tool)
    if spec is None:
        return None
    try:
        return spec.runs_on(tool_input)
    except Exception:  # noqa: BLE001 - a tool's routing bug must not strand the call: any worker answers
        logger.exception("tool %s could not say where a call must run; sending it to the tenant's queue", tool)
        return None


def call_run(kind: str, call_id, *, node: str) -> None:
    """Run one call (a task of the call's owner). Never raises for a tool's failure: it becomes the result."""
    owner = owner_of(kind)
    lease = Lease(lease_key(kind, call_id))
    if not lease.acquire():
        logger.info("tool %s %s is held by another worker; skipping this delivery", kind, call_id)
        return
    try:
        claimed = owner.call_claim(call_id, node=node)
        if claimed is None:
            return
        result = _result_of(claimed)
        if isinstance(result, Deferred):
            deadline = time.time() + result.timeout_seconds
            # Only over this worker's own token: a settle that came first has cleared the lease already.
            lease.hand_over(f"{DEFERRED_PREFIX}{deadline:.0f}",
                            ttl_ms=int((result.timeout_seconds + _DEFERRED_GRACE_SECONDS) * 1000))
            return
        try:
            owner.call_record(call_id, result)
        except Exception:  # noqa: BLE001 - a result that cannot be stored must not leave the caller waiting
            logger.exception("could not store the result of tool %s %s", kind, call_id)
            owner.call_record(call_id, error_result("the tool ran, but its result could not be stored"))
    finally:
        lease.release()


def call_settle(kind: str, call_id, result: dict) -> None:
    """Settle a call from outside (the event a Deferred call waits for). Idempotent."""
    owner_of(kind).call_record(call_id, _storable(result))
    redis_client().delete(lease_key(kind, call_id))


def _result_of(claimed: ClaimedCall) -> dict | Deferred:
    if claimed.refusal is not None:
        return error_result(claimed.refusal)
    try:
        spec = registry.tool_for(claimed.context.agent, claimed.tool)
    except (registry.ToolNotFound, registry.ToolForbidden) as exc:
        return error_result(str(exc))
    # Tools may wait for seconds; give the Postgres connection back to the pool meanwhile.
    close_old_connections()
    return execute(context=claimed.context, spec=spec, tool_input=claimed.input)


def execute(*, context: ToolContext, spec: ToolSpec, tool_input) -> dict | Deferred:
    """Run a tool and always return a result dict with `ok` (errors included, never raised), or the
    tool's Deferred."""
    try:
        validate_call(spec, tool_input)
        result = spec.run(context, tool_input)
    except ToolInputError as exc:
        return error_result(f"invalid input: {exc}")
    except Exception as exc:  # noqa: BLE001 - a tool bug becomes an error result, not a stuck run
        logger.exception("tool %s failed", spec.name)
        return error_result(f"{spec.name} failed unexpectedly: {exc.__class__.__name__}: {exc}")
    if isinstance(result, Deferred):
        return result
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


# --- recovery ----------------------------------------------------------------------------------------


def calls_recover(kind: str, calls: list[OpenCall]) -> None:
    """Housekeeping for open calls: re-send pending calls nothing holds, settle running calls whose
    worker died (or whose deferral ran out), and settle calls queued for a pinned worker that is gone."""
    if not calls:
        return
    owner = owner_of(kind)
    values = [value.decode() if value is not None else None for value in lease_values([lease_key(kind, c.id) for c in calls])]
    queued = [
        (call, _call_queue(call.tool, call.input, call.tenant_slug))
        for call, value in zip(calls, values) if value == QUEUED and not call.running
    ]
    lost = leases_lost_in_transit([(lease_key(kind, call.id), getattr(queue, "name", queue)) for call, queue in queued])
    resend = {call.id: queue for (call, queue), gone in zip(queued, lost) if gone}
    for call, value in zip(calls, values):
        try:
            _call_recover(owner, call, value, resend_to=resend.get(call.id))
        except Exception:  # noqa: BLE001 - one broken call must not keep the others from recovering
            logger.exception("could not recover tool %s %s", kind, call.id)


def _call_recover(owner: CallOwner, call: OpenCall, value: str | None, *, resend_to: Queue | str | None) -> None:
    """`resend_to`: the queue to send the call to again when its task was lost on the way to a worker."""
    problem = None
    if not call.running:
        if value is None:
            call_enqueue(owner.kind, call.id, tenant_slug=call.tenant_slug, tool=call.tool, tool_input=call.input,
                         only_if_free=True)
        elif value == QUEUED:
            problem = _pinned_worker_gone(call)
            if problem is None and resend_to is not None and lease_requeue(lease_key(owner.kind, call.id)):
                logger.warning("tool %s %s was lost on its way to a worker; sent again", owner.kind, call.id)
                _call_send(owner.kind, call.id, resend_to)
    elif value is None:
        logger.warning("tool %s %s lost its worker", owner.kind, call.id)
        problem = LOST_MESSAGE
    elif value.startswith(DEFERRED_PREFIX) and float(value[len(DEFERRED_PREFIX):]) < time.time():
        problem = "no result arrived before the call's deadline; it was given up"
    if problem is not None:
        owner.call_record(call.id, error_result(problem))


def _pinned_worker_gone(call: OpenCall) -> str | None:
    """A call queued on the direct queue of a worker that has since died waits for a consumer that will
    never come; this is the error it settles with instead."""
    node = _pinned_node(call.tool, call.input)
    if node is None or node_alive(node):
        return None
    return f"not run: this {call.tool} call had to run on worker {node}, which has stopped (what ran there ended with it)"


def render_result(spec: ToolSpec | None, result: dict) -> str:
    """The tool_result text for the model; never empty (the API rejects empty text blocks)."""
    if spec is not None:
        text = spec.render(result)
    elif result.get("ok"):
        text = output_text(result.get("output", ""))
    else:
        text = f"Error: {result.get('error') or output_text(result.get('output')) or 'the tool failed'}"
    return text if text.strip() else "(no output)"
