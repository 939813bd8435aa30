"""The tool phase of a run (DESIGN §5, steps 2-3): from a reply that asks for tools to the next step.

- `offered_tools(agent, session)`: the tool definitions sent with every completion request;
- `step_tool_calls(...)`: inside the step's finishing transaction, when the reply asks for tools: one
  ToolCall row per tool_use block. Calls the policy refuses (or with invalid input) settle at once with
  an error result; calls needing approval wait (`awaiting_approval`, and so does the run); the rest go
  to the tool runner (tools/runner.py), which runs them as tasks, in parallel;
- `step_resume(run, step)`: at the start of a step whose reply already exists (the reaper re-enqueued
  a step whose tools are in flight): drive the unsettled calls instead of asking the model again;
- `RUN_CALLS`: the run engine as the owner of these calls for the runner (claim, record a result,
  react to an approval decision).

When the last call of the step settles (checked under the run's row lock), ONE user message with every
tool_result block, in tool_use order, is appended, the run moves to step + 1 and its next step is
enqueued. The step cap then ends runaway loops at the start of that step.

While calls are in flight the run's lease holds the marker `tools` (renewed by every worker's
housekeeping as long as calls are unsettled), so the reaper does not re-enqueue the step; if every
worker was gone long enough for it to lapse, the reaper's re-run lands in step_resume.
"""

from functools import cache

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from beamclaw_project.infra.log_context import log_context_bind
from beamclaw_project.infra.rows import Columns, instances, row_update, select_one
from sessions import events
from sessions.models import AgentSession, Message, Run, ToolCall
from sessions.runs.client_calls import client_tool_names
from sessions.runs.kernel import (
    abort_flag_reason,
    run_lock,
    run_lock_reading,
    run_mark_tools_phase,
    step_enqueue,
    step_hand_back,
)
from sessions.runs.lifecycle import run_end_locked, steering_take_locked
from sessions.runs.tool_calls import SETTLED, UNSETTLED, call_payload, result_announce, results_append
from tenants.models import Agent, Tenant
from tools import approvals, registry, runner
from tools.base import CallRef, ToolContext, ToolInputError, ToolSpec, error_result, validate_call
from tools.models import Approval

KIND = runner.KIND_MODEL_CALL
# Calls the engine has nothing more to do with in this step: settled, or waiting for the client.
ENGINE_DONE = (*SETTLED, ToolCall.Status.AWAITING_CLIENT)


def offered_tools(agent, session, params: dict) -> tuple[dict, ...]:
    """The agent's own tools (run here), then the client's (`params["client_tools"]`, from an OpenAI
    request's `tools`: calls to them end the run and go back to the client). The edge refused name clashes."""
    return (*registry.tool_definitions(agent, session), *params.get("client_tools", ()))


def tool_choice_for(params: dict, step: int) -> dict | None:
    """The request's tool_choice for this step. A forced choice (`any`, or one named tool) holds for the
    run's first step only: after the forced call the model must be free to answer, or it would call tools
    until the step cap. `none` holds for every step."""
    choice = params.get("tool_choice")
    if not choice:
        return None
    if choice.get("type") in ("any", "tool") and step > 0:
        choice = {key: value for key, value in choice.items() if key != "name"} | {"type": "auto"}
    return choice


def reply_calls_tools(completion) -> bool:
    """Whether a reply asks for tool calls (step_tool_calls starts them): it stopped for them and has some."""
    return completion.stop_reason == "tool_use" and any(b.get("type") == "tool_use" for b in completion.content)


def step_tool_calls(*, run: Run, session: AgentSession, step: int, completion, lease=None) -> bool:
    """Start the tool calls of a reply. Caller holds the Run and session row locks and has written the
    assistant message, under the step's `lease`. Returns False when the reply asks for no tools (the run
    ends as usual)."""
    if not reply_calls_tools(completion):
        return False
    blocks = [b for b in completion.content if b.get("type") == "tool_use"]
    agent = session.agent
    client_names = client_tool_names(run.params)
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
        elif name in client_names:
            call.status = ToolCall.Status.AWAITING_CLIENT  # the client runs it, after the run ends
            call.save()
            calls.append(call)
            continue
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
        run_mark_tools_phase([run_id])
        for call in calls:
            events.publish(run_id, events.TOOL_CALL, call_payload(call))
            if call.status in SETTLED:
                result_announce(run_id, call)
            elif call.status == ToolCall.Status.PENDING:
                _enqueue(call, tenant_slug)

    transaction.on_commit(announce_and_enqueue)
    if all(call.status in ENGINE_DONE for call in calls):
        _step_advance_locked(run, session, step, lease=lease)
    return True


def step_resume(run: Run, step: int, lease=None) -> None:
    """For a step whose reply already exists (the caller checked): its tool calls are driven and the model
    is not called again. Idempotent: a call is enqueued only if nothing holds its lease."""
    run_mark_tools_phase([run.pk])
    open_calls = run.tool_calls.filter(step=step, status__in=(ToolCall.Status.PENDING, ToolCall.Status.RUNNING))
    runner.calls_recover(KIND, [_open_call(call, run.tenant.slug) for call in open_calls])
    with transaction.atomic():
        locked, session = run_lock(run.pk)
        _step_advance_locked(locked, session, step, lease=lease)


def _enqueue(call: ToolCall, tenant_slug: str) -> None:
    runner.call_enqueue(KIND, call.pk, tenant_slug=tenant_slug, tool=call.name, tool_input=call.input)


def _open_call(call: ToolCall, tenant_slug: str) -> runner.OpenCall:
    return runner.OpenCall(id=call.pk, running=call.status == ToolCall.Status.RUNNING, tool=call.name,
                           input=call.input, tenant_slug=tenant_slug)


def _step_advance_locked(run: Run, session: AgentSession, step: int, lease=None, *,
                         calls: list[ToolCall] | None = None) -> None:
    """Caller holds the session and run locks. Keep the run's status in line with its open calls; once
    all are settled, append the tool results (with any steering messages) and enqueue the next step.
    `lease`: the step's, when its own worker settles every call at once (all refused, say). `calls`: the
    step's calls in id order, if the caller read them under the locks (with its own changes to them made)."""
    if run.is_terminal or run.step != step:
        return
    if calls is None:
        calls = list(run.tool_calls.filter(step=step).order_by("id"))
    open_calls = [c for c in calls if c.status not in ENGINE_DONE]
    if open_calls:
        awaiting = any(c.status == ToolCall.Status.AWAITING_APPROVAL for c in open_calls)
        status = Run.Status.AWAITING_APPROVAL if awaiting else Run.Status.RUNNING
        if run.status != status:
            run.status = status
            row_update(run, ["status"])
        return
    client_calls = [c for c in calls if c.status == ToolCall.Status.AWAITING_CLIENT]
    if client_calls:
        _hand_to_client_locked(run, session, step, client_calls)
        return
    results_append(session, calls, step, also=steering_take_locked(session, run))
    run.step = step + 1
    run.status = Run.Status.RUNNING
    row_update(run, ["step", "status"])
    run_id, next_step, slug = run.pk, run.step, session.tenant.slug
    if lease is not None:
        # The lease goes from the step's worker to the queued step in one swap, then the step is sent:
        # while the lease is still the worker's, a worker quick to pick the step up would drop it.
        transaction.on_commit(lambda: step_hand_back(lease, run_id, next_step, slug))
    else:
        transaction.on_commit(lambda: step_enqueue(run_id, next_step, slug))


def _hand_to_client_locked(run: Run, session: AgentSession, step: int, client_calls: list[ToolCall]) -> None:
    """Everything the engine runs in this step has settled: end the run with the client's calls in its
    terminal event (client_calls.py). Caller holds the session and run locks."""
    reply = Message.objects.filter(run=run, step=step, role=Message.Role.ASSISTANT).first()
    payload = {
        "run_id": str(run.pk),
        "message": {"seq": reply.seq, "role": reply.role, "content": reply.content} if reply else None,
        "text": reply.text if reply else "",
        "stop_reason": "tool_use",
        "tool_calls": [{"id": c.tool_use_id, "name": c.name, "input": c.input} for c in client_calls],
        "model": session.agent.model,
        "usage": run.usage,
    }
    run_end_locked(run, Run.Status.SUCCEEDED, session=session, payload=payload)


class _RunCalls:
    """The run engine as owner of the model's tool calls (tools.runner.CallOwner)."""

    kind = KIND
    task_name = "tools.run_tool"

    def call_claim(self, call_id, *, node: str) -> runner.ClaimedCall | None:
        # The conditional update (runner.call_claim_pending's) and what the call runs with, in one statement.
        call_columns, *columns, sql = _claim_sql()
        row = select_one(sql, [ToolCall.Status.RUNNING, timezone.now(), call_id, ToolCall.Status.PENDING])
        if row is None:
            return None
        call, run, session, agent, tenant = instances(row, call_columns, *columns)
        call.run, run.session, run.tenant, session.agent, session.tenant, agent.tenant = run, session, tenant, agent, tenant, tenant
        log_context_bind(tenant=run.tenant.slug, session=run.session_id, run=run.pk)
        context = ToolContext(tenant=run.tenant, agent=run.session.agent, session=run.session, node=node,
                              call=CallRef(KIND, call.pk))
        refusal = None
        if run.is_terminal or abort_flag_reason(run.pk) is not None:
            refusal = "not run: the run was aborted or has ended"
        return runner.ClaimedCall(context=context, tool=call.name, input=call.input, refusal=refusal)

    def call_record(self, call_id, result: dict) -> None:
        """Record a call's result and continue the run if it was the step's last open call."""
        call_columns, ids_sql, lock_sql, step_sql = _record_sql()
        ids = select_one(ids_sql, [call_id])
        if ids is None:
            return
        run_id, session_id = ids
        with transaction.atomic():
            # The session, the run and the call locked, and the call's step's calls read, in one round trip.
            run, session, [call_rows, step_rows] = run_lock_reading(
                run_id, session_id, also=((lock_sql, [call_id]), (step_sql, [run_id, call_id])),
            )
            if not call_rows:
                return  # (deleted meanwhile: nothing waits for its result)
            call = call_columns.instance(call_rows[0])
            call.run = run
            if call.status in SETTLED:
                return
            call.status = ToolCall.Status.SUCCEEDED if result.get("ok") else ToolCall.Status.FAILED
            call.output = result
            call.finished_at = timezone.now()
            row_update(call, ["status", "output", "finished_at"])
            transaction.on_commit(lambda: result_announce(run_id, call))
            step_calls = [call if other.pk == call.pk else other for other in map(call_columns.instance, step_rows)]
            _step_advance_locked(run, session, call.step, calls=step_calls)

    def approval_lock(self, approval: Approval):
        run_id = ToolCall.objects.filter(pk=approval.tool_call_id).values_list("run_id", flat=True).get()
        run, session = run_lock(run_id)
        return run, session, ToolCall.objects.select_for_update().get(pk=approval.tool_call_id)

    def approval_decided_locked(self, locked, approval: Approval) -> None:
        run, session, call = locked
        call.decided_by = approval.decided_by
        if approval.status == Approval.Status.ALLOWED:
            call.status = ToolCall.Status.PENDING
            call.save(update_fields=["status", "decided_by"])
            slug = run.tenant.slug

            def enqueue():
                run_mark_tools_phase([run.pk])
                _enqueue(call, slug)

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
            transaction.on_commit(lambda: result_announce(run.pk, call))
        _step_advance_locked(run, session, call.step)


RUN_CALLS = _RunCalls()


# A tool call's claim and its result's record are on every tool round trip of a run, so their queries are
# written out (beamclaw_project/infra/rows.py): the ORM's compiling of the claim's five-table select_related
# alone took ~3 ms of a worker's CPU a call, and an unprepared join's planning ~2 ms of Postgres's.
@cache
def _claim_sql() -> tuple[Columns, Columns, Columns, Columns, Columns, str]:
    call, run, session = Columns(ToolCall, "c"), Columns(Run, "r"), Columns(AgentSession, "s")
    agent, tenant = Columns(Agent, "a"), Columns(Tenant, "t")
    sql = (
        f'WITH c AS (UPDATE "{ToolCall._meta.db_table}" SET status = %s, started_at = %s WHERE id = %s AND status = %s '
        f"RETURNING *) SELECT {call.sql}, {run.sql}, {session.sql}, {agent.sql}, {tenant.sql} FROM c "
        f'JOIN "{Run._meta.db_table}" r ON r.id = c.run_id JOIN "{AgentSession._meta.db_table}" s ON s.id = r.session_id '
        f'JOIN "{Agent._meta.db_table}" a ON a.id = s.agent_id JOIN "{Tenant._meta.db_table}" t ON t.id = r.tenant_id'
    )
    return call, run, session, agent, tenant, sql


@cache
def _record_sql() -> tuple[Columns, str, str, str]:
    call = Columns(ToolCall, "c")
    table = ToolCall._meta.db_table
    ids_sql = f'SELECT c.run_id, r.session_id FROM "{table}" c JOIN "{Run._meta.db_table}" r ON r.id = c.run_id WHERE c.id = %s'
    lock_sql = f'SELECT {call.sql} FROM "{table}" c WHERE c.id = %s FOR NO KEY UPDATE'
    # The calls of the locked call's step, in id order (what _step_advance_locked reads).
    step_sql = (f'SELECT {call.sql} FROM "{table}" c WHERE c.run_id = %s '
                f'AND c.step = (SELECT step FROM "{table}" WHERE id = %s) ORDER BY c.id')
    return call, ids_sql, lock_sql, step_sql


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
    run_mark_tools_phase({c.run_id for c in open_calls if c.status != ToolCall.Status.AWAITING_APPROVAL})
    runner.calls_recover(KIND, [
        _open_call(c, steps[c.run_id][1]) for c in open_calls if c.status != ToolCall.Status.AWAITING_APPROVAL
    ])
