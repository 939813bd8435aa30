"""What every tool is made of: its spec (schema sent to the model + implementation), the context it runs
in, and the checking of model-written input against the schema.

Tool input comes from the model (or an API caller) and is untrusted: it is checked against the tool's
JSON schema before anything runs, and every failure names the offending field.
"""

import json
from dataclasses import dataclass, field
from typing import Any, Callable

from beamclaw_project.errors import InvalidInput
from sessions.models import AgentSession
from tenants.models import Agent, Tenant


class ToolInputError(InvalidInput):
    def __init__(self, field: str, message: str):
        super().__init__(message, field=field)

    def __str__(self) -> str:
        # What the model reads in a refused call's result: the field and what is wrong with it.
        return f"{self.field}: {self.message}"


@dataclass(frozen=True)
class CallRef:
    """Which call this is, as `tools.runner.call_settle(ref.kind, ref.id, result)` takes it."""

    kind: str
    id: object


@dataclass(frozen=True)
class ToolContext:
    """Who a tool runs for, and where. `node` is the Celery node name of the worker running it; `call`
    is the call being run (a tool that answers Deferred hands it to whoever will settle it)."""

    tenant: Tenant
    agent: Agent
    session: AgentSession | None
    node: str
    call: CallRef | None = None

    @property
    def scope(self) -> str:
        """The unit that owns a workspace and background processes: the session, or for API calls
        without a session, the agent (`agent-<id>`)."""
        return str(self.session.pk) if self.session is not None else f"agent-{self.agent.pk}"


@dataclass(frozen=True)
class Deferred:
    """What a tool returns when its result will come later from an outside event (e.g. a sub-agent
    finishing): the call stays open without holding a worker, until `tools.runner.call_settle` is
    called with the result or `timeout_seconds` pass (then it fails as timed out)."""

    timeout_seconds: float


def error_result(message: str, **extra) -> dict:
    return {"ok": False, "error": message, "output": "", **extra}


def output_text(value) -> str:
    """Tool output as text: strings as they are, anything else (e.g. the cron tool's lists) as JSON."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str, indent=1)


def _default_render(result: dict) -> str:
    output = output_text(result.get("output", ""))
    if result.get("ok"):
        return output
    if result.get("error"):
        return f"Error: {result['error']}" + (f"\n{output}" if output else "")
    return f"Error: {output or 'the tool failed'}"


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    input_schema: dict
    group: str
    run: Callable[[ToolContext, dict], "dict | Deferred"]
    # The part of the input an approval allowlist pattern `tool:<glob>` is matched against.
    subject: Callable[[dict], str] = field(default=lambda tool_input: "")
    # Inputs that do not change what the call does (e.g. how long to wait for it), so an approval of the
    # call need not cover them; every other input must be covered (tools/approvals.py).
    approval_ignores: frozenset[str] = frozenset()
    # The tool_result text the model sees for a result dict.
    render: Callable[[dict], str] = field(default=_default_render)
    # Checks beyond the schema (e.g. exec's workdir stays in /workspace); raises ToolInputError.
    check: Callable[[dict], None] = field(default=lambda tool_input: None)
    # The subject is a shell command line: an allowlist glob never vouches for one that chains,
    # substitutes or redirects (tools/approvals.py).
    subject_is_shell: bool = False
    # The worker node that must run a call (the one owning the background process it is about), or
    # None when any worker of the tenant's queue may.
    runs_on: Callable[[dict], str | None] = field(default=lambda tool_input: None)
    # Whether the model is offered the tool in this session at all (e.g. no `skill` tool for an agent
    # without skills, no `sessions_spawn` for a sub-agent): a tool it could not use costs prompt tokens
    # on every step. The policy still decides what may run; this only trims what is offered.
    offered: Callable[[Agent, AgentSession | None], bool] = field(default=lambda agent, session: True)

    def definition(self) -> dict:
        return {"name": self.name, "description": self.description, "input_schema": self.input_schema}


_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
}


def validate_input(schema: dict, value: Any, path: str = "input") -> None:
    """Check `value` against the subset of JSON Schema our tools use (type, properties, required,
    additionalProperties, enum, minimum/maximum, maxLength, maxProperties, items)."""
    expected = schema.get("type")
    if expected:
        types = _TYPES[expected]
        # bool is an int in Python, never a number in JSON.
        if not isinstance(value, types) or (expected in ("integer", "number") and isinstance(value, bool)):
            raise ToolInputError(path, f"must be of type {expected}")
    if "enum" in schema and value not in schema["enum"]:
        raise ToolInputError(path, f"must be one of {', '.join(map(str, schema['enum']))}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            raise ToolInputError(path, f"must be >= {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            raise ToolInputError(path, f"must be <= {schema['maximum']}")
    if isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            raise ToolInputError(path, f"must be at least {schema['minLength']} characters")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            raise ToolInputError(path, f"must be at most {schema['maxLength']} characters")
        if "\x00" in value:
            raise ToolInputError(path, "must not contain NUL characters")
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        for name in schema.get("required", ()):
            if name not in value:
                raise ToolInputError(f"{path}.{name}", "is required")
        if "maxProperties" in schema and len(value) > schema["maxProperties"]:
            raise ToolInputError(path, f"must have at most {schema['maxProperties']} entries")
        extra = schema.get("additionalProperties", True)
        for name, item in value.items():
            if name in properties:
                validate_input(properties[name], item, f"{path}.{name}")
            elif extra is False:
                raise ToolInputError(f"{path}.{name}", "is not a known field")
            elif isinstance(extra, dict):
                validate_input(extra, item, f"{path}.{name}")
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            validate_input(schema["items"], item, f"{path}[{index}]")


def validate_call(spec: ToolSpec, tool_input) -> None:
    """Everything that can be said about an input before running it: the schema, then the tool's own
    checks. Raises ToolInputError naming the field."""
    if not isinstance(tool_input, dict):
        raise ToolInputError("input", "must be a JSON object")
    validate_input(spec.input_schema, tool_input)
    spec.check(tool_input)
