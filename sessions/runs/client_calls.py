"""Calls of the client's own tools (client-side function calling, sessions/client_tools.py).

The model may call the client's tools beside the agent's own in one reply. The agent's calls run here as
usual; the client's wait as `awaiting_client`. Once nothing else of the step is open, the run ends
(succeeded, stop reason `tool_use`) and its terminal event carries the client's calls (`tool_calls`).
No tool results are appended then: the Messages API wants every result of a reply in the one user turn
that follows it, so the agent's results wait in their ToolCall rows for the client's.

The client's next request brings its results; they are checked against the waiting calls when it is
submitted (`client_results_check_locked`) and kept in the new run's params until that run starts. Then
`client_results_take_locked` settles the calls and puts every result of the step, in tool_use order,
at the start of the run's user message. A session that moves on without the results (a plain message,
from any edge) gets an error result for each waiting call instead, so the transcript stays valid.
"""

from functools import cache

from django.utils import timezone

from beamclaw_project.errors import Conflict, InvalidInput
from beamclaw_project.infra.rows import Columns, select_all
from sessions.models import AgentSession, Run, ToolCall
from sessions.runs.tool_calls import result_blocks
from tools.base import error_result

NO_RESULT = "the client sent no result for this call; the conversation went on without it"


def client_tool_names(params: dict) -> set[str]:
    return {tool["name"] for tool in params.get("client_tools", ())}


def client_calls_of(run: Run, step: int) -> list[dict]:
    """The calls of `step` the run handed to the client, as its terminal event carries them."""
    names = client_tool_names(run.params)
    if not names:
        return []
    return [
        {"id": call.tool_use_id, "name": call.name, "input": call.input}
        for call in run.tool_calls.filter(step=step, name__in=names).order_by("id")
    ]


def _waiting(session: AgentSession) -> list[ToolCall]:
    return client_calls_waiting_of(select_all(*client_calls_waiting_statement(session.pk)))


@cache
def _waiting_sql() -> tuple[Columns, str]:
    # Written out, so that it can also be sent with other statements (a run's start after a wait for room).
    call = Columns(ToolCall, "c")
    return call, (
        f'SELECT {call.sql} FROM "{ToolCall._meta.db_table}" c JOIN "{Run._meta.db_table}" r ON r.id = c.run_id '
        f"WHERE r.session_id = %s AND c.status = '{ToolCall.Status.AWAITING_CLIENT}' ORDER BY c.id FOR NO KEY UPDATE OF c"
    )


def client_calls_waiting_statement(session_id) -> tuple[str, list]:
    """The session's calls waiting for the client's results, locked, to send with other statements
    (select_together); client_calls_waiting_of reads its rows. Caller holds the session lock."""
    return _waiting_sql()[1], [session_id]


def client_calls_waiting_of(rows: list[tuple]) -> list[ToolCall]:
    columns, _ = _waiting_sql()
    return [columns.instance(row) for row in rows]


def client_results_check_locked(session: AgentSession, results: dict[str, dict],
                                waiting: list[ToolCall] | None = None) -> None:
    """The client's results must answer exactly the calls waiting in this session. Caller holds the
    session lock. `waiting`: those calls, if the caller read them (client_calls_waiting_statement)."""
    waiting = {call.tool_use_id: call for call in (_waiting(session) if waiting is None else waiting)}
    if not waiting:
        raise Conflict(
            f"No tool calls of session {session.key} are waiting for results: they were answered already, or "
            "the conversation went on. Send the next user message instead.",
            code="no_tool_calls_waiting",
        )
    unknown = [call_id for call_id in results if call_id not in waiting]
    if unknown:
        raise InvalidInput(
            f"tool_call_id {unknown[0]!r} is not one of the calls waiting for a result "
            f"({', '.join(sorted(waiting))}).", field="tool_call_id",
        )
    missing = [call for call_id, call in waiting.items() if call_id not in results]
    if missing:
        raise InvalidInput(
            f"The {missing[0].name} call {missing[0].tool_use_id!r} has no result: send a tool message for every "
            "call of the assistant's reply.", field="messages",
        )


def client_results_take_locked(session: AgentSession, run: Run, waiting: list[ToolCall] | None = None) -> list[dict]:
    """At the start of `run`: settle the calls waiting for the client with the results the run brought
    (an error result for any it did not), and return the tool_result blocks of their whole step, which
    start the run's user message. Caller holds the session and run locks. `waiting`: the waiting calls, if
    the caller read them (client_calls_waiting_statement) with its own statements."""
    if waiting is None:
        waiting = _waiting(session)
    if not waiting:
        return []
    results = run.params.get("tool_results") or {}
    now = timezone.now()
    for call in waiting:
        result = results.get(call.tool_use_id)
        if result is None:
            call.status, call.output = ToolCall.Status.FAILED, error_result(NO_RESULT)
        else:
            text = "".join(block.get("text", "") for block in result.get("content", ()))
            call.status, call.output = ToolCall.Status.SUCCEEDED, {"ok": True, "output": text, "client": True}
        call.finished_at = now
        call.save(update_fields=["status", "output", "finished_at"])
    first = waiting[0]
    step_calls = list(ToolCall.objects.filter(run_id=first.run_id, step=first.step).order_by("id"))
    return result_blocks(step_calls)
