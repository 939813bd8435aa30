"""The `group:sessions` tools: an agent spawns sub-agents and talks to its session tree.

Registered in AgentSessionsConfig.ready(); tool policy and approvals apply as for any tool. The toolbox
never imports the engine, so these specs live here, with the services they call (sessions/subagents.py).
Every refusal is an error result the model can read and act on, never an exception out of the tool.
"""

from beamclaw_project.errors import DomainError
from sessions.models import ToolCall
from sessions.subagents import (
    is_subagent,
    session_history_text,
    session_in_tree,
    session_send,
    session_tree,
    subagent_spawn,
)
from tools.base import ToolContext, ToolSpec, error_result
from tools.runner import KIND_MODEL_CALL

GROUP = "group:sessions"

_NO_SESSION = (
    "this tool works on the calling session's tree, and this call has no session "
    "(pass `session` to /api/tools/invoke)"
)


def _calling_run_id(context: ToolContext):
    """The run whose model asked for this call (None for /api/tools/invoke)."""
    if context.call is None or context.call.kind != KIND_MODEL_CALL:
        return None
    return ToolCall.objects.filter(pk=context.call.id).values_list("run_id", flat=True).first()


def _refused(exc: DomainError) -> dict:
    return error_result(exc.message)


def _spawn(context: ToolContext, tool_input: dict) -> dict:
    if context.session is None:
        return error_result(_NO_SESSION)
    try:
        child, run = subagent_spawn(
            parent=context.session,
            task=tool_input["task"],
            agent_slug=tool_input.get("agent"),
            label=tool_input.get("label", "").strip(),
            spawned_by_id=_calling_run_id(context),
        )
    except DomainError as exc:
        return _refused(exc)
    return {
        "ok": True,
        "output": {
            "session_id": str(child.pk),
            "session_key": child.key,
            "run_id": str(run.pk),
            "agent": child.agent.slug,
            "label": child.label,
            "status": run.status,
            "note": "The sub-agent works on its own; its result will arrive here as a message when it finishes.",
        },
    }


def _list(context: ToolContext, tool_input: dict) -> dict:
    if context.session is None:
        return error_result(_NO_SESSION)
    return {"ok": True, "output": session_tree(session=context.session)}


def _history(context: ToolContext, tool_input: dict) -> dict:
    if context.session is None:
        return error_result(_NO_SESSION)
    try:
        target = session_in_tree(caller=context.session, ref=tool_input["session"])
    except DomainError as exc:
        return _refused(exc)
    return {"ok": True, "output": session_history_text(session=target, limit=tool_input.get("limit", 20))}


def _send(context: ToolContext, tool_input: dict) -> dict:
    if context.session is None:
        return error_result(_NO_SESSION)
    try:
        run = session_send(caller=context.session, ref=tool_input["session"], message=tool_input["message"])
    except DomainError as exc:
        return _refused(exc)
    return {"ok": True, "output": {"session_id": str(run.session_id), "run_id": str(run.pk), "status": run.status}}


_SESSION_REF = {"type": "string", "maxLength": 255, "description": "A session's id or key (sessions_list shows them)."}

SPAWN_TOOL = ToolSpec(
    name="sessions_spawn",
    description=(
        "Hand a task to a sub-agent: a new session of its own that works on it in the background. Returns at "
        "once with the sub-agent's session and run ids; when it finishes, its final reply (or its failure) "
        "arrives in this conversation as a message starting with [sub-agent ... finished: <status>]. "
        "Write the task so it stands alone: the sub-agent does not see this conversation. Sub-agents cannot "
        "spawn sub-agents; a session may have a few running at once."
    ),
    input_schema={
        "type": "object",
        "properties": {
            "task": {"type": "string", "minLength": 1, "maxLength": 50000, "description": "What the sub-agent should do."},
            "agent": {"type": "string", "maxLength": 63, "description": "Slug of the agent to run it (default: yours)."},
            "label": {"type": "string", "maxLength": 100, "description": "A short name for it, shown in its announcement."},
        },
        "required": ["task"],
        "additionalProperties": False,
    },
    group=GROUP,
    run=_spawn,
    subject=lambda tool_input: str(tool_input.get("agent", "")),
    # Not offered where a spawn is refused anyway (subagent_spawn says why, should the model call it).
    offered=lambda agent, session: session is not None and not session.ephemeral and not is_subagent(session),
)

LIST_TOOL = ToolSpec(
    name="sessions_list",
    description="List your sub-agents (key, label, status of their latest run, last update) and your parent session.",
    input_schema={"type": "object", "properties": {}, "additionalProperties": False},
    group=GROUP,
    run=_list,
)

HISTORY_TOOL = ToolSpec(
    name="sessions_history",
    description=(
        "Read the transcript (compact text, newest messages, long ones truncated) of a session in your tree: "
        "yourself, your parent or one of your sub-agents."
    ),
    input_schema={
        "type": "object",
        "properties": {
            "session": _SESSION_REF,
            "limit": {"type": "integer", "minimum": 1, "maximum": 100, "description": "How many messages (default 20)."},
        },
        "required": ["session"],
        "additionalProperties": False,
    },
    group=GROUP,
    run=_history,
    subject=lambda tool_input: str(tool_input.get("session", "")),
)

SEND_TOOL = ToolSpec(
    name="sessions_send",
    description=(
        "Send a message to one of your sub-agents (it answers in a run of its own, announced back here like "
        "its first result) or, from a sub-agent, to your parent session. Fire-and-forget: returns the run id."
    ),
    input_schema={
        "type": "object",
        "properties": {
            "session": _SESSION_REF,
            "message": {"type": "string", "minLength": 1, "maxLength": 50000},
        },
        "required": ["session", "message"],
        "additionalProperties": False,
    },
    group=GROUP,
    run=_send,
    subject=lambda tool_input: str(tool_input.get("session", "")),
)

SESSION_TOOLS = (SPAWN_TOOL, LIST_TOOL, HISTORY_TOOL, SEND_TOOL)
