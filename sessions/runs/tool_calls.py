"""A step's tool calls as transcript and events: what the run engine writes when calls settle, and what
it does with calls still open when their run ends. (Starting and settling calls: tool_phase.py.)

The tool_result message is stored without a `run` link: Message allows one user message per run (its
input). The ToolCall rows tie the results to the run.
"""

from django.db import transaction
from django.utils import timezone

from beamclaw_project.infra.metrics import tool_call_record
from sessions import events
from sessions.models import AgentSession, Message, Run, ToolCall
from sessions.runs.kernel import transcript_append
from tools import approvals, registry, runner
from tools.base import error_result
from tools.models import Approval

SETTLED = (ToolCall.Status.SUCCEEDED, ToolCall.Status.FAILED, ToolCall.Status.DENIED)
# Open calls the engine drives; a call awaiting the client is open too, but ends the run (client_calls.py).
UNSETTLED = (ToolCall.Status.PENDING, ToolCall.Status.AWAITING_APPROVAL, ToolCall.Status.RUNNING)


def result_blocks(calls: list[ToolCall]) -> list[dict]:
    """Every call's tool_result block, in the order given (tool_use order)."""
    tools = registry.registered_tools()
    return [
        {
            "type": "tool_result",
            "tool_use_id": call.tool_use_id,
            "content": [{"type": "text", "text": runner.render_result(tools.get(call.name), call.output or {})}],
            "is_error": not (call.output or {}).get("ok", False),
        }
        for call in calls
    ]


def results_append(session: AgentSession, calls: list[ToolCall], step: int, *, also: list[dict] = ()) -> None:
    """One user message with every call's tool_result, in tool_use order, then `also` (content that
    joins the run at this step boundary). Caller holds the session lock."""
    transcript_append(session, role=Message.Role.USER, content=[*result_blocks(calls), *also], step=step)


def open_calls_settle_locked(run: Run, session: AgentSession, status: str) -> None:
    """The run is about to end (caller holds session and run locks). Settle the current step's open
    calls as not run, deny their pending approvals, and append the step's tool results, so the
    transcript never holds a tool_use without its tool_result (the provider would reject the session's
    next request)."""
    calls = list(run.tool_calls.select_for_update().filter(step=run.step).order_by("id"))
    if not calls:
        return
    if status == Run.Status.SUCCEEDED and all(
        call.status in (*SETTLED, ToolCall.Status.AWAITING_CLIENT) for call in calls
    ):
        return  # the run ends to hand calls to the client: the step's results wait for its (client_calls.py)
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
    results_append(session, calls, run.step)
    run_id = run.pk

    def announce():
        for call in settled_now:
            result_announce(run_id, call)

    transaction.on_commit(announce)


def call_payload(call: ToolCall) -> dict:
    return {
        "call_id": call.pk,
        "tool_use_id": call.tool_use_id,
        "name": call.name,
        "input": call.input,
        "step": call.step,
        "status": call.status,
    }


def result_announce(run_id, call: ToolCall) -> None:
    """After the commit that settled a call: its tool.result event, and its count in the metrics."""
    tool_call_record(tool=call.name, status=call.status, known_tools=registry.registered_tools())
    events.publish(run_id, events.TOOL_RESULT, result_payload(call))


def result_payload(call: ToolCall) -> dict:
    return {
        "call_id": call.pk,
        "tool_use_id": call.tool_use_id,
        "name": call.name,
        "step": call.step,
        "status": call.status,
        "output": call.output,
    }
