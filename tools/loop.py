"""The tool loop of a run (DESIGN §5, steps 2-3). sessions/engine.py calls four small hooks:

- `offered_tools(agent)`: the tool definitions sent with every completion request;
- `step_tool_calls(...)`: inside `_finish_step`'s transaction, when the reply asks for tools: one
  ToolCall row per tool_use block. Calls the policy refuses (or with invalid input) settle at once with
  an error result; calls needing approval wait (`awaiting_approval`, and so does the run); the rest are
  sent as `tools.run_tool` tasks on the tenant's queue, where they run in parallel;
- `step_resume(run, step)`: at the start of `_execute_step`: if the step's reply already exists (the
  reaper re-enqueued a step whose tools are in flight), drive the unsettled calls instead of asking the
  model again;
- `run_ending_locked(...)`: whenever a run ends (aborted while awaiting approval, failed): calls still
  open are settled as not run and their results appended, so the transcript never holds a tool_use
  without its tool_result (the provider would reject the session's next request).

When the last call of the step settles (checked under the run's row lock), ONE user message with every
tool_result block, in tool_use order, is appended, the run moves to step + 1 and its next step is
enqueued. The engine's step cap then ends runaway loops at the start of that step.

While calls are in flight the run's lease holds the marker `tools` (short expiry, refreshed by every
worker's housekeeping as long as calls are unsettled), so the engine's reaper does not re-enqueue the
step; if every worker was gone long enough for it to lapse, the reaper's re-run lands in step_resume.

The tool_result message is stored without a `run` link: Message allows one user message per run (its
input). The ToolCall rows tie the results to the run. Locks follow the engine's order: session, run,
tool call, approval.
"""

import logging

from django.conf import settings
from django.db import close_old_connections, transaction
from django.utils import timezone

from sessions import events
from sessions.events import redis_client
from sessions.leases import TOOLS_PHASE
from sessions.leases import lease_key as run_lease_key
from sessions.models import AgentSession, Message, Run, ToolCall
from tools import approvals, execution, registry
from tools.base import ToolContext, ToolInputError, ToolSpec, error_result, validate_call
from tools.models import Approval

logger = logging.getLogger(__name__)

KIND = "call"
SETTLED = (ToolCall.Status.SUCCEEDED, ToolCall.Status.FAILED, ToolCall.Status.DENIED)
UNSETTLED = (ToolCall.Status.PENDING, ToolCall.Status.AWAITING_APPROVAL, ToolCall.Status.RUNNING)

# Set the marker unless a worker or a queued step holds the lease.
_MARK_SCRIPT = """
local v = redis.call('GET', KEYS[1])
if v == false or v == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""


def _marker_ttl_ms() -> int:
    return int(settings.BEAMCLAW["RUN_LEASE_SECONDS"] * 3000)


def _mark_tools_phase(run_ids) -> None:
    client = redis_client()
    for run_id in run_ids:
        client.eval(_MARK_SCRIPT, 1, run_lease_key(run_id), TOOLS_PHASE, _marker_ttl_ms())


def _abort_requested(run_id) -> bool:
    from sessions.engine import _abort_key

    return bool(redis_client().exists(_abort_key(run_id)))


# --- hooks called by the engine -------------------------------------------------------------------


def offered_tools(agent) -> tuple[dict, ...]:
    return registry.tool_definitions(agent)


def step_tool_calls(*, run: Run, session: AgentSession, step: int, completion) -> bool:
    """Start the tool calls of a reply. Caller holds the Run and session row locks and has written the
    assistant message. Returns False when the reply asks for no tools (the run ends as usual)."""
    blocks = [b for b in completion.content if b.get("type") == "tool_use"]
    if completion.stop_reason != "tool_use" or not blocks:
        return False
    agent = session.agent
    allowed = {spec.name: spec for spec in registry.allowed_tools(agent)}
    known = registry.registered_tools()
    cap = settings.BEAMCLAW_TOOLS["MAX_TOOL_CALLS_PER_STEP"]
    now = timezone.now()
    calls: list[ToolCall] = []
    waiting: list[tuple[ToolCall, ToolSpec]] = []
    for index, block in enumerate(blocks):
        name = str(block.get("name", ""))[:64]
        tool_input = block.get("input")
        call = ToolCall(run=run, step=step, tool_use_id=block["id"], name=name,
                        input=tool_input if isinstance(tool_input, dict) else {"value": tool_input})
        refusal, status = None, ToolCall.Status.FAILED
        if index >= cap:
            refusal = f"too many tool calls in one reply (limit {cap}); this one was not run"
        elif name not in allowed:
            status = ToolCall.Status.DENIED
            refusal = (f"tool {name!r} is not available to this agent" if name in known
                       else f"there is no tool named {name!r}")
        else:
            try:
                validate_call(allowed[name], tool_input)
            except ToolInputError as exc:
                refusal = f"invalid input: {exc}"
        if refusal is not None:
            call.status = status
            call.output = error_result(refusal)
            call.decided_by = "policy" if status == ToolCall.Status.DENIED else ""
            call.finished_at = now
        elif approvals.approval_needed(agent=agent, spec=allowed[name], tool_input=tool_input):
            call.status = ToolCall.Status.AWAITING_APPROVAL
        else:
            call.status = ToolCall.Status.PENDING
        call.save()
        calls.append(call)
        if call.status == ToolCall.Status.AWAITING_APPROVAL:
            waiting.append((call, allowed[name]))
    for call, spec in waiting:
        approvals.approval_open(agent=agent, spec=spec, tool_input=call.input, session=session, tool_call=call)

    run.status = Run.Status.AWAITING_APPROVAL if waiting else Run.Status.RUNNING
    run.save(update_fields=["status", "input_tokens", "output_tokens"])
    tenant_slug = session.tenant.slug
    run_id = run.pk

    def announce_and_enqueue():
        _mark_tools_phase([run_id])
        for call in calls:
            events.publish(run_id, events.TOOL_CALL, _call_payload(call))
            if call.status in SETTLED:
                events.publish(run_id, events.TOOL_RESULT, _result_payload(call))
            elif call.status == ToolCall.Status.PENDING:
                _enqueue_call(call, tenant_slug)

    transaction.on_commit(announce_and_enqueue)
    if all(call.status in SETTLED for call in calls):
        _advance_locked(run, session, step)
    return True


def step_resume(run: Run, step: int) -> bool:
    """True when this step's reply already exists: its tool calls are driven and the model is not
    called again. Idempotent: a call is enqueued only if nothing holds its lease."""
    if not Message.objects.filter(run=run, step=step, role=Message.Role.ASSISTANT).exists():
        return False
    from sessions.engine import _lock_run

    _mark_tools_phase([run.pk])
    _drive_calls(list(run.tool_calls.filter(step=step, status__in=UNSETTLED)), tenant_slug=run.tenant.slug)
    with transaction.atomic():
        locked, session = _lock_run(run.pk)
        _advance_locked(locked, session, step)
    return True


def run_ending_locked(run: Run, session: AgentSession, status: str) -> None:
    """The run is about to end (caller holds session and run locks). Settle the current step's open
    calls as not run, deny their pending approvals, and append the step's tool results."""
    calls = list(run.tool_calls.select_for_update().filter(step=run.step).order_by("id"))
    if not calls:
        return
    now = timezone.now()
    settled_now = []
    for call in calls:
        if call.status in SETTLED:
            continue
        if call.status == ToolCall.Status.AWAITING_APPROVAL:
            for approval in Approval.objects.select_for_update().filter(tool_call=call, status=Approval.Status.PENDING):
                approvals.approval_decide_locked(
                    approval, status=Approval.Status.DENIED, decided_by="run ended", reason=f"the run ended ({status})"
                )
        call.status = ToolCall.Status.FAILED if call.status == ToolCall.Status.RUNNING else ToolCall.Status.DENIED
        call.output = error_result(f"not run to completion: the run ended ({status}) first")
        call.finished_at = now
        call.save(update_fields=["status", "output", "finished_at"])
        settled_now.append(call)
    _append_results(session, calls, run.step)
    run_id = run.pk

    def announce():
        for call in settled_now:
            events.publish(run_id, events.TOOL_RESULT, _result_payload(call))

    transaction.on_commit(announce)


# --- running one call (tools.run_tool task) ----------------------------------------------------------


def tool_call_run(*, call_id, node: str) -> None:
    lease = execution.ToolLease(KIND, call_id)
    if not lease.acquire():
        logger.info("tool call %s is held by another worker; skipping this delivery", call_id)
        return
    try:
        claimed = ToolCall.objects.filter(pk=call_id, status=ToolCall.Status.PENDING).update(
            status=ToolCall.Status.RUNNING, started_at=timezone.now()
        )
        if not claimed:
            return
        call = ToolCall.objects.select_related("run__session__agent__tenant", "run__tenant").get(pk=call_id)
        run = call.run
        if run.is_terminal or _abort_requested(run.pk):
            result = error_result("not run: the run was aborted or has ended")
        else:
            agent = run.session.agent
            context = ToolContext(tenant=run.tenant, agent=agent, session=run.session, node=node)
            try:
                spec = registry.tool_for(agent, call.name)
            except (registry.ToolNotFound, registry.ToolForbidden) as exc:
                result = error_result(str(exc))
            else:
                # Tools may wait for seconds; give the Postgres connection back to the pool meanwhile.
                close_old_connections()
                result = execution.execute(context=context, spec=spec, tool_input=call.input)
        try:
            tool_call_settle(call_id=call_id, result=result)
        except Exception:  # noqa: BLE001 - a result that cannot be stored must not leave the run hanging
            logger.exception("could not store the result of tool call %s", call_id)
            tool_call_settle(call_id=call_id, result=error_result("the tool ran, but its result could not be stored"))
    finally:
        lease.release()


def tool_call_settle(*, call_id, result: dict) -> None:
    """Record a call's result and continue the run if it was the step's last open call."""
    from sessions.engine import _lock_run

    run_id = ToolCall.objects.filter(pk=call_id).values_list("run_id", flat=True).first()
    if run_id is None:
        return
    with transaction.atomic():
        run, session = _lock_run(run_id)
        call = ToolCall.objects.select_for_update().get(pk=call_id)
        if call.status in SETTLED:
            return
        call.status = ToolCall.Status.SUCCEEDED if result.get("ok") else ToolCall.Status.FAILED
        call.output = result
        call.finished_at = timezone.now()
        call.save(update_fields=["status", "output", "finished_at"])
        transaction.on_commit(lambda: events.publish(run_id, events.TOOL_RESULT, _result_payload(call)))
        _advance_locked(run, session, call.step)


def tool_call_decided_locked(run: Run, session: AgentSession, call: ToolCall, approval: Approval) -> None:
    """Move a call on after its approval was decided (caller holds session, run, call and approval locks)."""
    call.decided_by = approval.decided_by
    if approval.status == Approval.Status.ALLOWED:
        call.status = ToolCall.Status.PENDING
        call.save(update_fields=["status", "decided_by"])
        slug = run.tenant.slug

        def enqueue():
            _mark_tools_phase([run.pk])
            _enqueue_call(call, slug)

        transaction.on_commit(enqueue)
    else:
        if approval.status == Approval.Status.EXPIRED:
            message = f"not run: nobody approved this {call.name} call in time, so it was denied"
        else:
            message = f"not run: {approval.decided_by or 'a human'} denied this {call.name} call" + (
                f" ({approval.reason})" if approval.reason else "")
        call.status = ToolCall.Status.DENIED
        call.output = error_result(message, denied=True)
        call.finished_at = timezone.now()
        call.save(update_fields=["status", "decided_by", "output", "finished_at"])
        transaction.on_commit(lambda: events.publish(run.pk, events.TOOL_RESULT, _result_payload(call)))
    _advance_locked(run, session, call.step)


# --- continuing the run ------------------------------------------------------------------------------


def _advance_locked(run: Run, session: AgentSession, step: int) -> None:
    """Caller holds the session and run locks. Keep the run's status in line with its open calls; once
    all are settled, append the tool results and enqueue the next step."""
    from sessions.engine import _enqueue_step

    if run.is_terminal or run.step != step:
        return
    calls = list(run.tool_calls.filter(step=step).order_by("id"))
    open_calls = [c for c in calls if c.status not in SETTLED]
    if open_calls:
        awaiting = any(c.status == ToolCall.Status.AWAITING_APPROVAL for c in open_calls)
        status = Run.Status.AWAITING_APPROVAL if awaiting else Run.Status.RUNNING
        if run.status != status:
            run.status = status
            run.save(update_fields=["status"])
        return
    _append_results(session, calls, step, steer_into=run)
    run.step = step + 1
    run.status = Run.Status.RUNNING
    run.save(update_fields=["step", "status"])
    run_id, next_step, slug = run.pk, run.step, session.tenant.slug
    transaction.on_commit(lambda: _enqueue_step(run_id, next_step, slug))


def _append_results(session: AgentSession, calls: list[ToolCall], step: int, *, steer_into: Run | None = None) -> None:
    """One user message with every call's tool_result, in tool_use order. At a step boundary of a run
    that goes on (`steer_into`), messages sent to the session in `steer` mode meanwhile join it here."""
    from sessions.engine import _append_message, take_steering_locked

    tools = registry.registered_tools()
    results = [
        {
            "type": "tool_result",
            "tool_use_id": call.tool_use_id,
            "content": [{"type": "text", "text": execution.render_result(tools.get(call.name), call.output or {})}],
            "is_error": not (call.output or {}).get("ok", False),
        }
        for call in calls
    ]
    steering = take_steering_locked(session, steer_into) if steer_into is not None else []
    _append_message(session, role=Message.Role.USER, content=[*results, *steering], step=step)


# --- recovery ------------------------------------------------------------------------------------------


def _enqueue_call(call: ToolCall, tenant_slug: str, *, only_if_free: bool = False) -> None:
    from tools.tasks import run_tool

    execution.enqueue(run_tool, kind=KIND, object_id=call.pk, tenant_slug=tenant_slug, tool=call.name,
                      tool_input=call.input, only_if_free=only_if_free)


def _drive_calls(calls: list[ToolCall], *, tenant_slug: str) -> None:
    """Re-send pending calls nothing holds, settle running calls whose worker died, and fail `process`
    calls queued for a worker that is gone."""
    if not calls:
        return
    values = redis_client().mget([execution.lease_key(KIND, c.pk) for c in calls])
    for call, value in zip(calls, values):
        if call.status == ToolCall.Status.PENDING:
            if value is None:
                _enqueue_call(call, tenant_slug, only_if_free=True)
            elif (problem := execution.dead_owner_problem(call.name, call.input, value)) is not None:
                tool_call_settle(call_id=call.pk, result=error_result(problem))
        elif call.status == ToolCall.Status.RUNNING and value is None:
            logger.warning("tool call %s lost its worker", call.pk)
            tool_call_settle(call_id=call.pk, result=error_result(execution.LOST_MESSAGE))


def tool_calls_reap() -> None:
    """Housekeeping: keep the tools marker on runs with open calls and recover calls of dead workers."""
    active = list(Run.objects.filter(status__in=Run.ACTIVE_STATUSES).values_list("pk", "step", "tenant__slug")[:5000])
    if not active:
        return
    steps = {pk: (step, slug) for pk, step, slug in active}
    open_calls = [
        c for c in ToolCall.objects.filter(run_id__in=list(steps), status__in=UNSETTLED).only(
            "pk", "run_id", "step", "status", "name", "input")
        if c.step == steps[c.run_id][0]
    ]
    _mark_tools_phase({c.run_id for c in open_calls if c.status != ToolCall.Status.AWAITING_APPROVAL})
    by_tenant: dict[str, list[ToolCall]] = {}
    for call in open_calls:
        by_tenant.setdefault(steps[call.run_id][1], []).append(call)
    for slug, calls in by_tenant.items():
        _drive_calls(calls, tenant_slug=slug)


# --- event payloads ------------------------------------------------------------------------------------


def _call_payload(call: ToolCall) -> dict:
    return {
        "call_id": call.pk,
        "tool_use_id": call.tool_use_id,
        "name": call.name,
        "input": call.input,
        "step": call.step,
        "status": call.status,
    }


def _result_payload(call: ToolCall) -> dict:
    return {
        "call_id": call.pk,
        "tool_use_id": call.tool_use_id,
        "name": call.name,
        "step": call.step,
        "status": call.status,
        "output": call.output,
    }
