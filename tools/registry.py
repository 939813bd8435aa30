"""The tool registry and the per-agent tool policy.

Policy (`Agent.tool_policy = {"allow": [...], "deny": [...]}`): entries are tool names, groups
(`group:runtime`, ...) or globs (`web_*`, `*`). An empty or missing `allow` means every registered
tool; `deny` always wins. The result decides both what the model is offered and what may run: a call
to a tool outside it is refused at execution time too, on every path (agent loop, /api/tools/invoke).
A malformed policy (not lists of strings) allows nothing: failing closed beats guessing.
"""

import fnmatch
import logging

from beamclaw_project.errors import Forbidden, InvalidInput
from tenants.models import Agent
from tools.base import ToolSpec
from tools.builtins.exec import EXEC_TOOL
from tools.builtins.process import PROCESS_TOOL
from tools.builtins.skill import SKILL_READ_TOOL
from tools.builtins.web_fetch import WEB_FETCH_TOOL

logger = logging.getLogger(__name__)

# A policy entry `group:<name>` names the tools registered with that group, whatever they are: a group
# whose tools are not installed yet (sessions_* arrive with sub-agents) resolves to none, so a policy
# written today keeps its meaning when they land, and a plug-in may bring a group of its own.
GROUP_PREFIX = "group:"

_TOOLS: dict[str, ToolSpec] = {}


class ToolNotFound(InvalidInput):
    # The tool is named in the request (tools/invoke's `tool`): an unknown name is bad input, not a missing object.
    field = "tool"


class ToolForbidden(Forbidden):
    pass


def register(spec: ToolSpec) -> None:
    """Make a tool available to agents (their tool policy still decides who may use it). Apps register
    their tools in AppConfig.ready(); registering a name again replaces the tool."""
    if not spec.group.startswith(GROUP_PREFIX) or len(spec.group) == len(GROUP_PREFIX):
        raise ValueError(f"tool {spec.name!r} has group {spec.group!r}; a group is named 'group:<name>'")
    _TOOLS[spec.name] = spec


def registered_tools() -> dict[str, ToolSpec]:
    """Every registered tool by name, in registration order."""
    return dict(_TOOLS)


def group_members(group: str) -> tuple[str, ...]:
    return tuple(name for name, spec in _TOOLS.items() if spec.group == group)


for _builtin in (EXEC_TOOL, PROCESS_TOOL, WEB_FETCH_TOOL, SKILL_READ_TOOL):
    register(_builtin)


def _as_list(value) -> list[str] | None:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value
    return None


def _expand(entries: list[str], names: list[str]) -> set[str]:
    selected: set[str] = set()
    for entry in entries:
        entry = entry.strip()
        if entry.startswith(GROUP_PREFIX):
            selected.update(group_members(entry))
        elif any(ch in entry for ch in "*?["):
            selected.update(fnmatch.filter(names, entry))
        else:
            selected.add(entry)
    return selected


def allowed_tools(agent: Agent) -> list[ToolSpec]:
    """The agent's tools, in registry order."""
    tools = registered_tools()
    names = list(tools)
    policy = agent.tool_policy if isinstance(agent.tool_policy, dict) else None
    allow = _as_list(policy.get("allow")) if policy is not None else None
    deny = _as_list(policy.get("deny")) if policy is not None else None
    if allow is None or deny is None:
        logger.warning("agent %s has a malformed tool_policy %r; no tools are allowed", agent.pk, agent.tool_policy)
        return []
    permitted = set(names) if not allow else _expand(allow, names)
    permitted -= _expand(deny, names)
    return [tools[name] for name in names if name in permitted]


def tool_definitions(agent: Agent, session=None) -> tuple[dict, ...]:
    """What the model is offered (CompletionRequest.tools) in `session`: the allowed tools that are of use there."""
    return tuple(spec.definition() for spec in allowed_tools(agent) if spec.offered(agent, session))


def tool_for(agent: Agent, name: str) -> ToolSpec:
    """The tool `name` if this agent may use it; ToolNotFound / ToolForbidden otherwise."""
    tools = registered_tools()
    if name not in tools:
        raise ToolNotFound(f"there is no tool named {name!r}")
    if not any(spec.name == name for spec in allowed_tools(agent)):
        raise ToolForbidden(f"tool {name!r} is not allowed for agent {agent.slug!r} (its tool_policy excludes it)")
    return tools[name]
