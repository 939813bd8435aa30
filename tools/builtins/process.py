"""process: look after background exec commands (list, poll, log, write, kill).

Calls naming a handle are routed to the worker that owns it (ToolSpec.runs_on, honoured by
tools.runner), so they run here, next to the process; `list` reads the Redis mirror and runs anywhere.
"""

import time

from beamclaw_project.infra.heartbeats import node_alive
from tools.base import ToolContext, ToolInputError, ToolSpec, error_result
from tools.processes import PROCESSES, handle_node, owning_node, scope_processes

INPUT_SCHEMA = {
    "type": "object",
    "properties": {
        "action": {"type": "string", "enum": ["list", "poll", "log", "write", "kill"]},
        "handle": {"type": "string", "maxLength": 300, "description": "The handle exec returned (all actions but list)."},
        "data": {"type": "string", "maxLength": 65536, "description": "write: text to send to the process's stdin."},
        "eof": {"type": "boolean", "description": "write: close stdin after the data."},
        "lines": {"type": "integer", "minimum": 1, "maximum": 5000, "description": "log: how many last lines (default 200)."},
        "wait_seconds": {
            "type": "number",
            "minimum": 0,
            "maximum": 30,
            "description": "poll: wait up to this long for new output or the exit (default 0).",
        },
    },
    "required": ["action"],
    "additionalProperties": False,
}

DESCRIPTION = (
    "Manage background commands started by exec: list them, poll one for new output and its exit code, "
    "read the last lines of its output (log), write to its stdin, or kill it."
)


def _list(context: ToolContext) -> dict:
    processes = scope_processes(tenant_id=context.tenant.pk, scope=context.scope)
    lines = [
        f"{p['handle']}  {p['status']}"
        + (f" (exit code {p['exit_code']})" if p["status"] == "exited" else "")
        + f"  {p['command'][:120]}"
        for p in processes
    ]
    return {"ok": True, "output": "\n".join(lines) or "no background processes", "processes": processes}


def check_process(tool_input: dict) -> None:
    if tool_input["action"] != "list" and not tool_input.get("handle"):
        raise ToolInputError("input.handle", f"is required for action {tool_input['action']}")


def run_process(context: ToolContext, tool_input: dict) -> dict:
    action = tool_input["action"]
    if action == "list":
        return _list(context)
    handle = tool_input["handle"]
    entry = PROCESSES.get(handle, tenant_id=context.tenant.pk, scope=context.scope)
    if entry is None:
        node = handle_node(handle)
        if node and node != context.node and not node_alive(node):
            return error_result(f"process {handle} ran on worker {node}, which has stopped; the process ended with it")
        return error_result(f"no background process {handle} in this session (see process list)")
    process = entry.process

    if action == "poll":
        wait = float(tool_input.get("wait_seconds") or 0)
        deadline = time.monotonic() + wait
        while process.running and process.output.total <= entry.poll_offset and time.monotonic() < deadline:
            process.wait(min(0.1, max(0.0, deadline - time.monotonic())))
        output, entry.poll_offset = process.output.since(entry.poll_offset)
        summary = entry.summary()
        return {"ok": True, "output": output, **{k: summary[k] for k in ("handle", "status", "exit_code", "timed_out")}}

    if action == "log":
        lines = int(tool_input.get("lines") or 200)
        tail = "\n".join(process.output.text().split("\n")[-lines:])
        return {"ok": True, "output": tail, "status": entry.summary()["status"], "handle": handle}

    if action == "write":
        try:
            written = process.write(tool_input.get("data", "").encode(), eof=bool(tool_input.get("eof")))
        except BrokenPipeError:
            return error_result(f"process {handle} has exited or its input is closed")
        return {"ok": True, "output": f"wrote {written} bytes", "written": written, "handle": handle}

    if not process.running:
        return {"ok": True, "output": f"process {handle} had already exited (exit code {process.exit_code})", "handle": handle}
    process.terminate("killed by the process tool")
    return {"ok": True, "output": f"process {handle} is being stopped (SIGTERM, then SIGKILL)", "handle": handle}


def _render(result: dict) -> str:
    if not result.get("ok"):
        return f"Error: {result.get('error')}"
    text = result.get("output", "")
    if "status" in result and "exit_code" in result:
        state = result["status"] if result["status"] != "exited" else f"exited with code {result['exit_code']}"
        return f"{text}\n[{result['handle']} {state}]"
    return text


PROCESS_TOOL = ToolSpec(
    name="process",
    description=DESCRIPTION,
    input_schema=INPUT_SCHEMA,
    group="group:runtime",
    run=run_process,
    subject=lambda tool_input: str(tool_input.get("action", "")),
    approval_ignores=frozenset({"lines", "wait_seconds"}),
    render=_render,
    check=check_process,
    runs_on=owning_node,
)
