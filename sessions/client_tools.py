"""A client's own tools in an OpenAI request (client-side function calling), checked once for every edge
that takes them (Chat Completions and the Responses API).

The client's function definitions become Messages API tool definitions offered beside the agent's own
tools (run param `client_tools`, see sessions/runs/tool_phase.py). When the model calls one, the run ends
with the call handed to the client; the client's next request brings the result (`role: "tool"` messages
or `function_call_output` items), which continues the session. A call's id is the model's tool_use id on
every edge.

All shapes come out as the Messages API's (sessions/providers/base.py): tool_use and tool_result blocks,
tool_choice `{"type": "auto"|"any"|"tool"|"none", "name"?, "disable_parallel_tool_use"?}`.
"""

import json
import re

from beamclaw_project.errors import InvalidInput
from tools.registry import allowed_tools

# OpenAI's own rule for function names; the Messages API takes the same characters.
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_CLIENT_TOOLS = 128
MAX_TOOL_SCHEMA_CHARS = 50_000
TOOL_CHOICES = ("auto", "none", "required")


class ClientToolsInvalid(InvalidInput):
    """`field` is the request parameter at fault (e.g. `tools[2].function.name`)."""


def client_tools_parse(value, *, param: str = "tools", flat: bool = False) -> list[dict]:
    """OpenAI function tools as Messages API tool definitions. Chat Completions nests each definition
    (`{"type": "function", "function": {name, description?, parameters?}}`); the Responses API has it
    flat (`{"type": "function", name, description?, parameters?}`)."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise ClientToolsInvalid(f"{param} must be an array of function tools.", field=param)
    if len(value) > MAX_CLIENT_TOOLS:
        raise ClientToolsInvalid(f"{param} has {len(value)} tools; at most {MAX_CLIENT_TOOLS} are allowed.", field=param)
    definitions: list[dict] = []
    seen: set[str] = set()
    for i, tool in enumerate(value):
        where = f"{param}[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise ClientToolsInvalid(
                f"{where}.type must be 'function'" + (f"; '{kind}' tools are not supported by this gateway." if kind else "."),
                field=f"{where}.type",
            )
        function, prefix = (tool, where) if flat else (tool.get("function"), f"{where}.function")
        if not isinstance(function, dict):
            raise ClientToolsInvalid(f"{prefix} must be an object with a name.", field=prefix)
        name = function.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise ClientToolsInvalid(
                f"{prefix}.name must be 1 to 64 letters, digits, '_' or '-'.", field=f"{prefix}.name"
            )
        if name in seen:
            raise ClientToolsInvalid(f"{prefix}.name '{name}' is defined twice.", field=f"{prefix}.name")
        seen.add(name)
        description = function.get("description")
        if description is not None and not isinstance(description, str):
            raise ClientToolsInvalid(f"{prefix}.description must be a string.", field=f"{prefix}.description")
        parameters = function.get("parameters")
        if parameters is None:
            parameters = {"type": "object", "properties": {}}
        if not isinstance(parameters, dict) or parameters.get("type", "object") != "object":
            raise ClientToolsInvalid(
                f"{prefix}.parameters must be a JSON Schema of type 'object'.", field=f"{prefix}.parameters"
            )
        if len(json.dumps(parameters)) > MAX_TOOL_SCHEMA_CHARS:
            raise ClientToolsInvalid(
                f"{prefix}.parameters is larger than {MAX_TOOL_SCHEMA_CHARS} characters.", field=f"{prefix}.parameters"
            )
        definition = {"name": name, "input_schema": {"type": "object", **parameters}}
        if description:
            definition["description"] = description
        definitions.append(definition)
    return definitions


def tool_choice_parse(value, *, parallel=None, param: str = "tool_choice", flat: bool = False) -> dict | None:
    """OpenAI's tool_choice (and parallel_tool_calls) as the Messages API's tool_choice; None when both are
    left at their defaults. Whether a forced tool exists is checked once the agent is known
    (sessions/chat.py client_tools_check)."""
    if parallel is not None and not isinstance(parallel, bool):
        raise ClientToolsInvalid("parallel_tool_calls must be a boolean.", field="parallel_tool_calls")
    if value is None:
        choice = None
    elif value in TOOL_CHOICES:
        choice = {"type": {"required": "any"}.get(value, value)}
    elif isinstance(value, dict) and value.get("type") == "function":
        function = value if flat else value.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str) or not _NAME.match(name):
            raise ClientToolsInvalid(f"{param} must name a function (1 to 64 letters, digits, '_' or '-').", field=param)
        choice = {"type": "tool", "name": name}
    else:
        shape = '{"type": "function", "name": ...}' if flat else '{"type": "function", "function": {"name": ...}}'
        raise ClientToolsInvalid(f"{param} must be 'auto', 'none', 'required' or {shape}.", field=param)
    if parallel is False:
        choice = {**(choice or {"type": "auto"}), "disable_parallel_tool_use": True}
    return choice


def client_tools_check_clash(agent, client_tools: list[dict], *, param: str = "tools") -> None:
    """A client tool named like one of the agent's own would make a call ambiguous: which side runs it?"""
    own = {spec.name for spec in allowed_tools(agent)}
    for i, tool in enumerate(client_tools):
        if tool["name"] in own:
            raise ClientToolsInvalid(
                f"{param}[{i}] is named '{tool['name']}', like one of the tools of agent '{agent.slug}'; rename the "
                f"client tool (the agent's own tools run on the server: {', '.join(sorted(own))}).",
                field=f"{param}[{i}]",
            )


def agent_tool_names(agent) -> set[str]:
    return {spec.name for spec in allowed_tools(agent)}


def tool_use_blocks(tool_calls, *, where: str) -> list[dict]:
    """An assistant message's `tool_calls` (history the client sends back) as tool_use blocks."""
    if not isinstance(tool_calls, list):
        raise ClientToolsInvalid(f"{where} must be an array.", field=where)
    blocks = []
    for i, call in enumerate(tool_calls):
        at = f"{where}[{i}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(call, dict) or not isinstance(call.get("id"), str) or not call["id"] or not isinstance(function, dict):
            raise ClientToolsInvalid(f"{at} must be {{\"id\", \"type\": \"function\", \"function\": {{\"name\", \"arguments\"}}}}.", field=at)
        blocks.append(tool_use_block(call["id"], function.get("name"), function.get("arguments"), where=at))
    return blocks


def tool_use_block(call_id: str, name, arguments, *, where: str) -> dict:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ClientToolsInvalid(f"{where}: the function name must be 1 to 64 letters, digits, '_' or '-'.", field=where)
    try:
        tool_input = json.loads(arguments) if isinstance(arguments, str) and arguments.strip() else {}
    except ValueError as exc:
        raise ClientToolsInvalid(f"{where}: arguments is not valid JSON ({exc}).", field=where) from None
    if not isinstance(tool_input, dict):
        raise ClientToolsInvalid(f"{where}: arguments must encode a JSON object.", field=where)
    return {"type": "tool_use", "id": call_id, "name": name, "input": tool_input}


def tool_result_block(call_id, output_blocks: list[dict], *, where: str) -> dict:
    """A client's result for one call (a `tool` message's content, already parsed) as a tool_result."""
    if not isinstance(call_id, str) or not call_id or len(call_id) > 64:
        raise ClientToolsInvalid(f"{where}: tool_call_id must be the id of a tool call (a non-empty string).", field=where)
    text = [b for b in output_blocks if b.get("type") == "text"]
    return {"type": "tool_result", "tool_use_id": call_id, "content": text or [{"type": "text", "text": "(no output)"}]}


def openai_tool_calls(calls: list[dict]) -> list[dict]:
    """The run's client tool calls (`{"id", "name", "input"}`) as Chat Completions `tool_calls`."""
    return [
        {"id": call["id"], "type": "function",
         "function": {"name": call["name"], "arguments": json.dumps(call["input"], separators=(",", ":"))}}
        for call in calls
    ]
