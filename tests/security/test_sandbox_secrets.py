"""Attack: another user on the worker's host reads what a tenant's exec carries (its command and its
`env` values) from the world-readable /proc/<pid>/cmdline, and a sandboxed command learns host paths
from its own /proc/1/cmdline (bwrap's argv)."""

import os
import secrets
import uuid

from sessions.models import AgentSession
from tests.conftest import ROOT, wait_until
from tests.tools.conftest import WORKSPACE_ROOT, _remove_workspaces, exec_ok, invoke, requires_bwrap, tools_settings  # noqa: F401

pytestmark = requires_bwrap


def host_cmdlines() -> dict[int, bytes]:
    """Every process's argv as any host user can read it."""
    found = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as file:
                    found[int(entry.name)] = file.read()
            except OSError:
                continue  # ended meanwhile
    return found


def test_exec_command_and_env_values_are_not_in_any_host_cmdline(live, tenant):
    env_secret = f"env-secret-{secrets.token_hex(8)}"
    command_secret = f"command-secret-{secrets.token_hex(8)}"
    session = AgentSession.objects.create(tenant=tenant.tenant, agent=tenant.agent, key=f"agent:assistant:{uuid.uuid4().hex[:8]}")
    command = (
        f"echo {command_secret} >/dev/null; echo value=$API_TOKEN; tr '\\0' ' ' < /proc/1/cmdline; echo; "
        "echo ready; read line; echo bye"
    )
    started = exec_ok(live, tenant, command, session=session.pk, extra={"background": True, "env": {"API_TOKEN": env_secret}})
    handle = started["handle"]

    def output_so_far():
        response = invoke(live, tenant, "process", {"action": "log", "handle": handle}, session=session.pk)
        text = response.json()["output"]
        return text if "ready" in text else None

    output = wait_until(output_so_far, timeout=30, message="the sandboxed command to be running")
    assert f"value={env_secret}\n" in output, "the variable still reaches the command"

    # The command is blocked on `read`, so its whole sandbox is alive while we look.
    cmdlines = host_cmdlines()
    sandboxed = [argv for argv in cmdlines.values() if b"/.exec/command" in argv]
    assert sandboxed, "the scan sees the sandbox's processes"
    for pid, argv in cmdlines.items():
        assert env_secret.encode() not in argv, f"pid {pid} shows the env value: {argv[:200]!r}"
        assert command_secret.encode() not in argv, f"pid {pid} shows the command: {argv[:200]!r}"

    pid1 = output.split("value=", 1)[1].split("\n")[1]
    assert pid1.startswith("/usr/bin/bwrap --args "), pid1
    for host_path in (WORKSPACE_ROOT, str(ROOT), "/.sandbox-etc"):
        assert host_path not in pid1, f"the sandbox's /proc/1/cmdline names a host path: {pid1}"

    assert invoke(live, tenant, "process", {"action": "write", "handle": handle, "data": "x\n", "eof": True}, session=session.pk).json()["ok"]
    wait_until(
        lambda: invoke(live, tenant, "process", {"action": "poll", "handle": handle}, session=session.pk).json()["status"] == "exited",
        timeout=30, message="the command to finish",
    )
    final = invoke(live, tenant, "process", {"action": "log", "handle": handle}, session=session.pk).json()["output"]
    assert final.endswith("bye\n")


def test_a_command_still_behaves_like_sh_c(live, tenant):
    """The command now reaches the shell as a file it sources: exit codes, stdin, syntax errors, quoting
    and multi-line scripts work as they did with `sh -c`."""
    assert exec_ok(live, tenant, "echo 'a  b' \"$HOME\"; exit 7")["output"] == "a  b /workspace\n"
    assert exec_ok(live, tenant, "exit 7")["exit_code"] == 7
    assert exec_ok(live, tenant, "for i in 1 2\ndo echo $i\ndone")["output"] == "1\n2\n"
    broken = exec_ok(live, tenant, "echo before; if then")
    assert broken["exit_code"] == 2 and "Syntax error" in broken["output"]
    assert exec_ok(live, tenant, "cat /.exec/command")["output"] == "cat /.exec/command\n"
