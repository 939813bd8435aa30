"""A tool registered the way an operator's plug-in registers one (name this module in BEAMCLAW_PLUGINS):
`wait_for_signal` answers Deferred, so its call stays open, holding no worker, until something settles it
from outside (tools.runner.call_settle) or its deadline passes. It leaves its call's reference where the
"outside" (the test) can find it, as a sub-agent spawn hands it to the child run."""

from beamclaw_project.infra.redis import redis_client
from tools.base import Deferred, ToolContext, ToolSpec
from tools.registry import register


def _wait(context: ToolContext, tool_input: dict) -> Deferred:
    # tests/tools/test_plugin_tools.py reads it from here.
    redis_client().set(f"bc:test:deferred:{context.session.pk}", f"{context.call.kind}:{context.call.id}", ex=3600)
    return Deferred(timeout_seconds=tool_input["timeout_seconds"])


register(ToolSpec(
    name="wait_for_signal",
    description="Wait until someone sends the signal.",
    input_schema={
        "type": "object",
        "properties": {"timeout_seconds": {"type": "number", "minimum": 0, "maximum": 3600}},
        "required": ["timeout_seconds"],
        "additionalProperties": False,
    },
    group="group:sessions",
    run=_wait,
))
