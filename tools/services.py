"""Tool services: invoking a tool outside a run (POST /api/tools/invoke), resolving approvals from any
edge (REST, WebSocket, admin) and the workers' housekeeping for tools.

An invocation goes through exactly what a model's call goes through: the agent's tool policy, input
validation, approvals, and execution by the one runner (tools/runner.py) as a task on a worker (where
the sandbox and background processes live), never in the web process. This module is the owner of
invocations for the runner (`API_INVOCATIONS`), as the run engine is of the model's calls.
"""

import json
from dataclasses import dataclass
from typing import Literal

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from beamclaw_project.errors import Conflict, LimitExceeded
from beamclaw_project.infra.log_context import log_context_bind
from beamclaw_project.infra.metrics import tool_call_record
from beamclaw_project.infra.redis import redis_client
from sessions.idempotency import idempotency_claim, idempotency_record, request_fingerprint
from sessions.models import AgentSession
from tenants.models import Agent, Tenant
from tools import approvals, registry, runner
from tools.base import CallRef, ToolContext, error_result, validate_call
from tools.models import Approval, ToolInvocation
from tools.processes import PROCESSES

KIND = runner.KIND_API_INVOCATION
RESULT_TTL_SECONDS = 600


class ApprovalNotPending(Conflict):
    def __init__(self, approval: Approval):
        super().__init__(f"This approval was already decided: {approval.status}.")
        self.approval = approval


def invocation_result_key(invocation_id) -> str:
    return f"bc:tool:{KIND}:{invocation_id}:result"


# --- invoking -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InvokeOutcome:
    invocation: ToolInvocation
    approval: Approval | None
    replay: bool = False  # an earlier request with the same Idempotency-Key started this invocation


def tool_invoke_once(*, idempotency_key: str | None, request_parts: tuple, **invoke) -> InvokeOutcome:
    """tool_invoke, once per Idempotency-Key: a repeat of the same request (same `request_parts`) gets the
    first invocation."""
    if idempotency_key is None:
        return tool_invoke(**invoke)
    with transaction.atomic():
        claim = idempotency_claim(
            tenant_id=invoke["tenant"].pk, endpoint="tools.invoke", key=idempotency_key,
            fingerprint=request_fingerprint(*request_parts),
        )
        if claim.replay:
            invocation = ToolInvocation.objects.select_related("tenant").get(pk=claim.record.invocation_id)
            approval = None
            if invocation.status == ToolInvocation.Status.AWAITING_APPROVAL:
                approval = Approval.objects.filter(invocation=invocation).order_by("-created_at").first()
            return InvokeOutcome(invocation=invocation, approval=approval, replay=True)
        outcome = tool_invoke(**invoke)
        idempotency_record(claim, invocation_id=outcome.invocation.pk)
        return outcome


def tool_invoke(
    *, tenant: Tenant, agent: Agent, tool: str, tool_input: dict, session: AgentSession | None = None, requested_by: str = ""
) -> InvokeOutcome:
    """Start one tool call for an agent. Raises registry.ToolNotFound / ToolForbidden and
    base.ToolInputError before anything is recorded."""
    spec = registry.tool_for(agent, tool)
    validate_call(spec, tool_input)
    approval = None
    with transaction.atomic():
        _check_invocations_in_flight_locked(tenant)
        invocation = ToolInvocation.objects.create(
            tenant=tenant, agent=agent, session=session, tool=tool, input=tool_input, requested_by=requested_by[:100]
        )
        if approvals.approval_needed(agent=agent, spec=spec, tool_input=tool_input):
            invocation.status = ToolInvocation.Status.AWAITING_APPROVAL
            invocation.save(update_fields=["status"])
            approval = approvals.approval_open(agent=agent, spec=spec, tool_input=tool_input, session=session, invocation=invocation)
        else:
            transaction.on_commit(lambda: _enqueue_invocation(invocation))
    return InvokeOutcome(invocation=invocation, approval=approval)


def _check_invocations_in_flight_locked(tenant: Tenant) -> None:
    """Each invocation holds a worker thread while it runs (a `sleep 1800` for half an hour): without a
    cap, one tenant could occupy every worker thread and stall everyone's runs. The tenant row lock makes
    concurrent requests count each other."""
    cap = settings.BEAMCLAW_TOOLS["MAX_INVOCATIONS_IN_FLIGHT_PER_TENANT"]
    # NO KEY: see sessions/runs/kernel.py.
    Tenant.objects.select_for_update(no_key=True).filter(pk=tenant.pk).values_list("pk", flat=True).first()
    busy = ToolInvocation.objects.filter(
        tenant=tenant, status__in=(ToolInvocation.Status.PENDING, ToolInvocation.Status.RUNNING)
    ).count()
    if busy >= cap:
        raise LimitExceeded(
            f"This tenant already has {busy} tool invocations running (limit {cap}); wait for one to finish "
            "(GET /api/tools/invocations/{id}/) or stop a background process with the process tool.",
            code="tool_invocations_in_flight", retry_after=5,
        )


def _enqueue_invocation(invocation: ToolInvocation, *, only_if_free: bool = False) -> None:
    runner.call_enqueue(KIND, invocation.pk, tenant_slug=invocation.tenant.slug, tool=invocation.tool,
                        tool_input=invocation.input, only_if_free=only_if_free)


def invocation_response(invocation: ToolInvocation) -> dict:
    """What POST /api/tools/invoke answers with: the tool's result plus which invocation it was."""
    return {**(invocation.output or {}), "invocation": str(invocation.pk), "tool": invocation.tool}


def _publish_result(invocation: ToolInvocation) -> None:
    """Hand the result to a waiting POST /api/tools/invoke (it BLPOPs this key)."""
    tool_call_record(tool=invocation.tool, status=invocation.status, known_tools=registry.registered_tools())
    key = invocation_result_key(invocation.pk)
    pipe = redis_client().pipeline(transaction=False)
    pipe.rpush(key, json.dumps(invocation_response(invocation)))
    pipe.expire(key, RESULT_TTL_SECONDS)
    pipe.execute()


class _ApiInvocations:
    """POST /api/tools/invoke's calls, as their owner for the runner (tools.runner.CallOwner): a
    settled result is handed to the waiting request through a Redis list."""

    kind = KIND
    task_name = "tools.run_invocation"

    def call_claim(self, call_id, *, node: str) -> runner.ClaimedCall | None:
        if not runner.call_claim_pending(ToolInvocation, call_id):
            return None
        invocation = ToolInvocation.objects.select_related("tenant", "agent", "session").get(pk=call_id)
        log_context_bind(tenant=invocation.tenant.slug, session=invocation.session_id)
        context = ToolContext(tenant=invocation.tenant, agent=invocation.agent, session=invocation.session, node=node,
                              call=CallRef(KIND, invocation.pk))
        return runner.ClaimedCall(context=context, tool=invocation.tool, input=invocation.input)

    def call_record(self, call_id, result: dict) -> None:
        with transaction.atomic():
            invocation = ToolInvocation.objects.select_for_update().get(pk=call_id)
            if invocation.status in ToolInvocation.SETTLED_STATUSES:
                return
            invocation.status = ToolInvocation.Status.SUCCEEDED if result.get("ok") else ToolInvocation.Status.FAILED
            invocation.output = result
            invocation.finished_at = timezone.now()
            invocation.save(update_fields=["status", "output", "finished_at"])
            transaction.on_commit(lambda: _publish_result(invocation))

    def approval_lock(self, approval: Approval) -> ToolInvocation:
        return ToolInvocation.objects.select_for_update().select_related("tenant").get(pk=approval.invocation_id)

    def approval_decided_locked(self, invocation: ToolInvocation, approval: Approval) -> None:
        if approval.status == Approval.Status.ALLOWED:
            invocation.status = ToolInvocation.Status.PENDING
            invocation.save(update_fields=["status"])
            transaction.on_commit(lambda: _enqueue_invocation(invocation))
            return
        if approval.status == Approval.Status.EXPIRED:
            reason = "nobody approved it in time"
        else:
            reason = f"{approval.decided_by} denied it" + (f" ({approval.reason})" if approval.reason else "")
        invocation.status = ToolInvocation.Status.DENIED
        invocation.output = error_result(f"not run: {reason}", denied=True)
        invocation.finished_at = timezone.now()
        invocation.save(update_fields=["status", "output", "finished_at"])
        transaction.on_commit(lambda: _publish_result(invocation))


API_INVOCATIONS = _ApiInvocations()


def invocations_reap() -> None:
    """Housekeeping: re-send pending invocations nothing holds; fail those whose worker died."""
    open_invocations = ToolInvocation.objects.filter(
        status__in=(ToolInvocation.Status.PENDING, ToolInvocation.Status.RUNNING)
    ).select_related("tenant")[:1000]
    runner.calls_recover(KIND, [
        runner.OpenCall(id=inv.pk, running=inv.status == ToolInvocation.Status.RUNNING, tool=inv.tool,
                        input=inv.input, tenant_slug=inv.tenant.slug)
        for inv in open_invocations
    ])


# --- approvals --------------------------------------------------------------------------------------------


def approval_resolve(
    *, approval_id, tenant: Tenant, decision: Literal["allow", "deny"], always: bool = False, decided_by: str, reason: str = ""
) -> Approval:
    """Decide a pending approval of `tenant`. Raises Approval.DoesNotExist (unknown or another tenant's),
    ApprovalNotPending (already decided or expired) or ValueError (bad decision).

    allow: the call runs (as a task); with always=True the agent's allowlist also gains an exact
    pattern for it. deny: the call is not run and the model (or API caller) gets a result saying so."""
    if decision not in ("allow", "deny"):
        raise ValueError("decision must be 'allow' or 'deny'")
    status = Approval.Status.ALLOWED if decision == "allow" else Approval.Status.DENIED
    return _decide(_tenant_approval(approval_id, tenant), status=status, decided_by=decided_by, always=always, reason=reason)


def _tenant_approval(approval_id, tenant: Tenant) -> Approval:
    try:
        return Approval.objects.get(pk=approval_id, tenant=tenant)
    except (ValidationError, ValueError):
        raise Approval.DoesNotExist(f"no approval {approval_id!r}") from None


def _decide(approval: Approval, *, status: str, decided_by: str, always: bool = False, reason: str = "") -> Approval:
    owner = runner.owner_of(runner.KIND_MODEL_CALL if approval.tool_call_id is not None else KIND)
    with transaction.atomic():
        # Lock order everywhere: what the owner locks (session, run, tool call; or the invocation), then
        # the approval.
        locked = owner.approval_lock(approval)
        approval = Approval.objects.select_for_update().get(pk=approval.pk)
        if approval.status != Approval.Status.PENDING:
            raise ApprovalNotPending(approval)
        approvals.approval_decide_locked(approval, status=status, decided_by=decided_by, always=always, reason=reason)
        owner.approval_decided_locked(locked, approval)
    return approval


def approvals_expire() -> int:
    """Housekeeping: approvals nobody answered in time are denied (status `expired`)."""
    expired = 0
    due = Approval.objects.filter(status=Approval.Status.PENDING, expires_at__lte=timezone.now())[:500]
    for approval in list(due):
        try:
            _decide(approval, status=Approval.Status.EXPIRED, decided_by="timeout", reason="no answer before it expired")
        except ApprovalNotPending:
            continue  # another worker's housekeeping or a human got there first
        expired += 1
    return expired


# --- housekeeping -------------------------------------------------------------------------------------------


def _live_sessions(ids: set[str]) -> set[str]:
    return {
        str(pk)
        for pk in AgentSession.objects.filter(pk__in=list(ids), status=AgentSession.Status.ACTIVE).values_list("pk", flat=True)
    }


def processes_housekeeping() -> None:
    """Housekeeping: end background processes of sessions that ended, forget exited ones."""
    PROCESSES.housekeeping(live_sessions=_live_sessions)
