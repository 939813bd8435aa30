"""exec: run a shell command in the session's sandbox (tools/sandbox.py).

The call waits up to a yield window (EXEC_YIELD_SECONDS, or `yield_ms`) for the command to finish; a
command still running then keeps running in the background on this worker and the call returns a handle
for the `process` tool. The command's `timeout` (wall clock, default EXEC_TIMEOUT_SECONDS) applies either
way.
"""

import posixpath
import re
import time

from django.conf import settings
from django.db import close_old_connections

from tools.base import ToolContext, ToolInputError, ToolSpec, error_result
from tools.processes import PROCESSES
from tools.sandbox import (
    WORKSPACE,
    SandboxError,
    SandboxSpec,
    disk_problem,
    sandbox_problem,
    sandbox_run,
    sandbox_uid,
    workspace_over_cap,
    workspace_prepare,
    workspace_usage,
)
from tools.skills import skill_mounts

# Variables the caller may not set: they change how the shell, the dynamic loader or interpreters start
# (an approved `git status` must stay `git status`), or they would override the sandbox's fixed values.
BLOCKED_ENV = frozenset(
    {
        "PATH", "HOME", "USER", "LOGNAME", "SHELL", "IFS", "ENV", "BASH_ENV", "PS4", "PROMPT_COMMAND",
        "CDPATH", "GLOBIGNORE", "NODE_OPTIONS", "PYTHONPATH", "PYTHONSTARTUP", "PYTHONHOME", "PYTHONINSPECT",
        "RUBYLIB", "RUBYOPT", "PERL5LIB", "PERL5OPT", "PERLLIB", "GCONV_PATH", "LOCPATH", "TMPDIR",
    }
)
BLOCKED_ENV_PREFIXES = ("LD_", "DYLD_", "BASH_FUNC_")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

_conf = settings.BEAMCLAW_TOOLS  # the schema's defaults and bounds; run_exec reads live settings

INPUT_SCHEMA = {
    "type": "object",
    "properties": {
        "command": {"type": "string", "minLength": 1, "maxLength": 65536, "description": "Shell command, run with `sh -c`."},
        "workdir": {
            "type": "string",
            "maxLength": 4096,
            "description": "Directory to run in: relative to /workspace or an absolute path inside it (default /workspace).",
        },
        "env": {
            "type": "object",
            "maxProperties": 64,
            "additionalProperties": {"type": "string", "maxLength": 32768},
            "description": "Extra environment variables. PATH, HOME, LD_* and similar are refused.",
        },
        "timeout": {
            "type": "number",
            "minimum": 1,
            "maximum": _conf["EXEC_MAX_TIMEOUT_SECONDS"],
            "description": f"Wall-clock limit in seconds (default {_conf['EXEC_TIMEOUT_SECONDS']:g}); the command is killed after it.",
        },
        "background": {"type": "boolean", "description": "Return a handle at once and keep the command running."},
        "yield_ms": {
            "type": "integer",
            "minimum": 0,
            "maximum": 120000,
            "description": f"How long to wait before backgrounding a still-running command (default {_conf['EXEC_YIELD_SECONDS'] * 1000:g}).",
        },
    },
    "required": ["command"],
    "additionalProperties": False,
}

DESCRIPTION = (
    "Run a shell command (sh -c) in an isolated Linux sandbox. /workspace is your persistent, writable "
    "directory for this session; the rest of the filesystem is read-only, /tmp is private and small, and "
    "there is no network access unless the operator enabled it. stdout and stderr are merged; only the last "
    "200 KB are returned. Commands still running after the yield window continue in the background and "
    "return a handle for the `process` tool."
)


def _workdir(value: str | None) -> str:
    if not value:
        return WORKSPACE
    path = posixpath.normpath(value if value.startswith("/") else f"{WORKSPACE}/{value}")
    if path != WORKSPACE and not path.startswith(WORKSPACE + "/"):
        raise ToolInputError("input.workdir", "must be inside /workspace")
    return path


def _env(value: dict | None) -> dict:
    env = dict(value or {})
    for name in env:
        if not _ENV_NAME.match(name):
            raise ToolInputError(f"input.env.{name}", "is not a valid variable name")
        if name in BLOCKED_ENV or name.startswith(BLOCKED_ENV_PREFIXES):
            raise ToolInputError(f"input.env.{name}", "may not be set (it changes how programs start or overrides the sandbox)")
    if sum(len(k) + len(v) for k, v in env.items()) > 65536:
        raise ToolInputError("input.env", "is larger than 64 KB")
    return env


def check_exec(tool_input: dict) -> None:
    _workdir(tool_input.get("workdir"))
    _env(tool_input.get("env"))
    timeout = tool_input.get("timeout")
    if timeout is not None and timeout > settings.BEAMCLAW_TOOLS["EXEC_MAX_TIMEOUT_SECONDS"]:
        raise ToolInputError("input.timeout", f"must be <= {settings.BEAMCLAW_TOOLS['EXEC_MAX_TIMEOUT_SECONDS']:g}")


def run_exec(context: ToolContext, tool_input: dict) -> dict:
    conf = settings.BEAMCLAW_TOOLS
    network = (context.agent.sandbox or {}).get("network") is True
    problem = sandbox_problem(network=network)
    if problem:
        return error_result(problem)
    workdir = _workdir(tool_input.get("workdir"))
    env = _env(tool_input.get("env"))
    timeout = float(tool_input.get("timeout") or conf["EXEC_TIMEOUT_SECONDS"])
    yield_seconds = tool_input["yield_ms"] / 1000 if "yield_ms" in tool_input else conf["EXEC_YIELD_SECONDS"]
    background = bool(tool_input.get("background"))
    if (capped := PROCESSES.cap_problem(tenant_id=context.tenant.pk, scope=context.scope, background=background)) is not None:
        return error_result(capped)
    slot = None
    if background:
        slot = PROCESSES.claim(tenant_id=context.tenant.pk, scope=context.scope)
        if isinstance(slot, str):
            return error_result(slot)

    uid = sandbox_uid(tenant_slug=context.tenant.slug, scope=context.scope)
    workspace = workspace_prepare(tenant_slug=context.tenant.slug, scope=context.scope, uid=uid)
    if (disk := disk_problem(workspace)) is not None:
        if slot is not None:
            PROCESSES.release(slot)
        return error_result(f"not run: {disk}")
    # Over its cap, a workspace still runs commands (how else would files be deleted?), but no file in
    # it may grow: the command's writes fail with EFBIG.
    used = workspace_usage(workspace)
    spec = SandboxSpec(
        command=tool_input["command"],
        workspace=workspace,
        uid=uid,
        workdir=workdir,
        env=env,
        timeout=timeout,
        network=network,
        tenant=context.tenant.slug,
        scope=context.scope,
        workspace_used=used,
        skills=skill_mounts(context.agent),
    )
    # Finding the skills took a database connection again; the command may run for minutes without one.
    close_old_connections()
    started = time.monotonic()
    try:
        process = sandbox_run(spec, on_exit=PROCESSES.on_exit)
    except BaseException as exc:
        if slot is not None:
            PROCESSES.release(slot)
        if isinstance(exc, SandboxError):
            return error_result(str(exc))
        raise

    if slot is None and not process.wait(yield_seconds):
        slot = PROCESSES.claim(tenant_id=context.tenant.pk, scope=context.scope)
        if isinstance(slot, str):
            # No background place is free: the command stays in the foreground until it ends (its
            # timeout bounds that), rather than failing because of processes the caller cannot stop.
            # Its input is closed: nobody could write to it without a handle.
            slot = None
            try:
                process.write(b"", eof=True)
            except BrokenPipeError:
                pass
            process.wait(None)
    if slot is not None:
        entry = PROCESSES.add(process=process, slot=slot, command=spec.command, node=context.node)
        output, entry.poll_offset = process.output.since(0)
        return {
            "ok": True,
            "status": "running",
            "handle": entry.handle,
            "output": output,
            "exit_code": None,
            "timed_out": False,
            "truncated": process.output.truncated,
        }

    result = {
        "ok": process.stopped_for is None,
        "status": "exited",
        "output": process.output.text(),
        "exit_code": process.exit_code,
        "timed_out": process.timed_out,
        "truncated": process.output.truncated,
        "duration_ms": int((time.monotonic() - started) * 1000),
    }
    if process.timed_out:
        result["error"] = f"the command timed out after {timeout:g} s and was killed with everything it started"
    elif process.stopped_for is not None:
        result["error"] = f"the command was stopped: {process.stopped_for}"
    elif process.memory_limited is not None:
        result["ok"] = False
        result["error"] = f"out of memory: {process.memory_limited}; the kernel killed a process of the command"
    if "error" not in result and (over := workspace_over_cap(used)) is not None:
        result["warning"] = over
    return result


def render_exec(result: dict) -> str:
    output = result.get("output") or ""
    if not result.get("ok"):
        return f"Error: {result.get('error', 'exec failed')}" + (f"\n{output}" if output else "")
    if result.get("status") == "running":
        return (
            f"{output}\n[still running in the background as {result['handle']}; use the process tool "
            "(poll, log, write, kill) with this handle]"
        )
    warning = f"\n[{result['warning']}]" if result.get("warning") else ""
    return f"{output}\n[exit code {result['exit_code']}]{warning}"


EXEC_TOOL = ToolSpec(
    name="exec",
    description=DESCRIPTION,
    input_schema=INPUT_SCHEMA,
    group="group:runtime",
    run=run_exec,
    subject=lambda tool_input: str(tool_input.get("command", "")),
    subject_is_shell=True,
    approval_ignores=frozenset({"timeout", "yield_ms"}),
    render=render_exec,
    check=check_exec,
)
