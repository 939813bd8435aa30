"""exec end to end (POST /api/tools/invoke -> a real worker -> bubblewrap), and the escape and abuse
attempts the sandbox must stop. Every attack ends with a clear result and a worker that still works."""

import os
from pathlib import Path

from tests.conftest import ROOT, wait_until
from tests.tools.conftest import (
    SERVER_SECRET,
    WORKSPACE_ROOT,
    assert_worker_healthy,
    exec_ok,
    invoke,
    requires_bwrap,
    sandbox_processes,
)
from tools.sandbox import TailBuffer, sandbox_uid

pytestmark = requires_bwrap


def agent_uid(bundle) -> int:
    return sandbox_uid(tenant_slug=bundle.tenant.slug, scope=f"agent-{bundle.agent.pk}")


# --- behaviour ----------------------------------------------------------------------------------------


def test_exec_basics(live, tenant):
    result = exec_ok(live, tenant, "echo hello")
    assert {k: result[k] for k in ("ok", "status", "output", "exit_code", "timed_out", "truncated", "tool")} == {
        "ok": True, "status": "exited", "output": "hello\n", "exit_code": 0, "timed_out": False, "truncated": False,
        "tool": "exec",
    }
    assert exec_ok(live, tenant, "exit 42")["exit_code"] == 42
    assert exec_ok(live, tenant, "echo hello | tr h H")["output"] == "Hello\n"
    assert exec_ok(live, tenant, "nonexistent_command_xyz")["exit_code"] == 127
    assert exec_ok(live, tenant, "echo $TEST_VAR", extra={"env": {"TEST_VAR": "hello"}})["output"] == "hello\n"


def test_stderr_is_merged_into_the_output(live, tenant):
    assert exec_ok(live, tenant, "echo out; echo err >&2")["output"] == "out\nerr\n"


def test_workspace_persists_between_calls_and_workdir_stays_inside(live, tenant):
    exec_ok(live, tenant, "mkdir -p sub && echo kept > sub/file")
    assert exec_ok(live, tenant, "cat file && pwd", extra={"workdir": "sub"})["output"] == "kept\n/workspace/sub\n"
    assert exec_ok(live, tenant, "pwd", extra={"workdir": "/workspace/sub"})["output"] == "/workspace/sub\n"
    escaped = invoke(live, tenant, "exec", {"command": "pwd", "workdir": "../../etc"})
    assert escaped.status_code == 400 and "input.workdir" in escaped.text
    host_dir = Path(WORKSPACE_ROOT) / tenant.tenant.slug / f"agent-{tenant.agent.pk}"
    assert (host_dir / "sub" / "file").read_text() == "kept\n"


def test_blocked_environment_variables_are_refused(live, tenant):
    for name in ("LD_PRELOAD", "LD_LIBRARY_PATH", "PATH", "HOME", "BASH_ENV", "DYLD_INSERT_LIBRARIES", "PYTHONPATH"):
        response = invoke(live, tenant, "exec", {"command": "true", "env": {name: "/danger"}})
        assert response.status_code == 400 and f"input.env.{name}" in response.text, name


def test_timeout_kills_and_says_so(live, tenant):
    result = exec_ok(live, tenant, "echo before; sleep 30", extra={"timeout": 1})
    assert result["ok"] is False and result["timed_out"] is True and "timed out after 1 s" in result["error"]
    assert result["output"] == "before\n"


def test_sigterm_is_followed_by_sigkill_after_the_grace_period(live, tenant):
    # The command ignores SIGTERM and never ends by itself: the call comes back only because SIGKILL
    # followed once the grace period was over.
    result = exec_ok(live, tenant, "trap '' TERM; while :; do sleep 0.1; done", extra={"timeout": 1})
    assert result["timed_out"] and result["ok"] is False
    assert_worker_healthy(live, tenant)


def test_a_command_that_runs_past_the_yield_window_gets_a_handle(live, tenant):
    result = exec_ok(live, tenant, "echo starting; sleep 3; echo done", extra={"yield_ms": 300})
    assert result["status"] == "running" and result["handle"].startswith("proc-") and "@" in result["handle"]
    assert result["output"] == "starting\n"


def test_output_over_the_cap_keeps_the_tail(live, tenant):
    result = exec_ok(live, tenant, "seq 1 100000")  # 588 895 bytes
    assert result["truncated"] is True
    assert result["output"].endswith("99999\n100000\n")
    kept = result["output"].split("\n", 1)[1]
    assert result["output"].startswith("[... 388895 earlier bytes of output omitted ...]")
    assert len(kept.encode()) == 200_000


def test_tail_buffer_keeps_exactly_the_last_bytes():
    buffer = TailBuffer(200_000)
    for _ in range(3):
        buffer.append(b"X" * 100_000)
    assert buffer.total == 300_000 and buffer.truncated
    assert buffer.since(0) == ("[... 100000 bytes omitted ...]\n" + "X" * 200_000, 300_000)
    assert buffer.since(250_000) == ("X" * 50_000, 300_000)


def test_without_bwrap_exec_refuses_clearly(monkeypatch):
    from tools import sandbox

    monkeypatch.setattr(sandbox, "_which", lambda name: None)
    problem = sandbox.sandbox_problem(network=False)
    assert "bubblewrap (bwrap) is not installed" in problem and "never run outside the sandbox" in problem


def test_a_bwrap_that_cannot_create_namespaces_is_reported_as_such(monkeypatch):
    from tools import sandbox

    monkeypatch.setattr(sandbox, "_selftest_passed", False)
    monkeypatch.setattr(sandbox, "_root_filesystem_args", lambda: ["--no-such-option"])
    problem = sandbox.sandbox_problem(network=False)
    assert problem.startswith("exec is unavailable: bubblewrap cannot create its sandbox on this worker")
    assert "no-such-option" in problem and "user namespaces" in problem


# --- escape and abuse attempts -----------------------------------------------------------------------


def test_server_secrets_are_not_readable(live, tenant):
    result = exec_ok(
        live, tenant,
        "env; cat /proc/1/environ; cat /proc/self/environ; cat /proc/*/environ; "
        f"cat {ROOT}/.env {ROOT}/beamclaw_project/settings.py; ls {ROOT}; ls /root /home /work /run /var; "
        f"grep -rs {SERVER_SECRET} /etc /tmp /workspace | head -1; true",
    )
    output = result["output"]
    assert result["status"] == "exited"
    assert SERVER_SECRET not in output
    for secret in ("test-key", "ANTHROPIC", "DATABASE_URL", "REDIS_URL", "SECRET_KEY", "beamclaw_test"):
        assert secret not in output, secret
    assert f"{ROOT}/beamclaw_project/settings.py: No such file or directory" in output
    assert "PATH=/usr/local/sbin" in output, "pid 1 (bwrap) sees only the PATH it was started with"
    assert_worker_healthy(live, tenant)


def test_loopback_services_are_unreachable(live, tenant):
    gateway_port = live.rsplit(":", 1)[1]
    script = (
        "import socket\n"
        f"for port in (5432, 6379, {gateway_port}):\n"
        "    try:\n"
        "        socket.create_connection(('127.0.0.1', port), timeout=2); print(port, 'CONNECTED')\n"
        "    except OSError as exc: print(port, type(exc).__name__)\n"
        "for host in ('10.0.2.2', '8.8.8.8', '169.254.169.254'):\n"
        "    try:\n"
        "        socket.create_connection((host, 80), timeout=2); print(host, 'CONNECTED')\n"
        "    except OSError as exc: print(host, type(exc).__name__)\n"
    )
    result = exec_ok(live, tenant, f"python3 -c \"{script}\"; ls /var/run/postgresql 2>&1; ip addr 2>&1 | grep -c inet")
    assert "CONNECTED" not in result["output"]
    assert f"{gateway_port} ConnectionRefusedError" in result["output"] and "6379 ConnectionRefusedError" in result["output"]
    assert "8.8.8.8 OSError" in result["output"], "no route out without sandbox.network"
    assert_worker_healthy(live, tenant)


def test_network_enabled_sandbox_still_cannot_reach_the_host_or_private_ranges(live, make_tenant):
    bundle = make_tenant(sandbox={"network": True})
    script = (
        "import socket\n"
        "for host in ('127.0.0.1', '10.0.2.2', '10.0.0.1', '169.254.169.254', '192.168.1.1', '172.16.0.1'):\n"
        "    try:\n"
        "        socket.create_connection((host, 6379), timeout=2); print(host, 'CONNECTED')\n"
        "    except OSError as exc: print(host, exc.strerror)\n"
    )
    result = exec_ok(live, bundle, f"python3 -c \"{script}\"; cat /etc/resolv.conf")
    output = result["output"]
    assert result["ok"], result
    assert "CONNECTED" not in output, output
    assert "127.0.0.1 Connection refused" in output  # the sandbox's own loopback, not the host's
    for host in ("10.0.2.2", "10.0.0.1", "169.254.169.254", "192.168.1.1", "172.16.0.1"):
        assert any(f"{host} {error}" in output for error in ("Network is unreachable", "Permission denied")), output
    assert "nameserver 10.0.2.3" in output
    assert_worker_healthy(live, bundle)


def test_nothing_outside_the_workspace_is_writable(live, tenant):
    result = exec_ok(
        live, tenant,
        "for f in /usr/evil /etc/evil /evil /proc/evil /bin/evil /lib/evil; do touch $f 2>/dev/null && echo WROTE $f; done; "
        "echo private > /tmp/t && cat /tmp/t; mount -t tmpfs x /workspace 2>&1 | head -1",
    )
    assert "WROTE" not in result["output"] and "private" in result["output"]
    assert not Path("/evil").exists() and not Path("/usr/evil").exists()
    assert_worker_healthy(live, tenant)


def test_a_symlink_out_of_the_workspace_leads_nowhere(live, tenant):
    target = ROOT / "beamclaw_project" / "settings.py"
    result = exec_ok(live, tenant, f"ln -sf {target} leak; ln -sfn / rootlink; cat leak; ls rootlink/; cat rootlink/etc/shadow")
    assert "BEAMCLAW_TOOLS" not in result["output"] and "No such file or directory" in result["output"]
    # Following the link from the host side would reach the real file; nothing of ours does.
    host_link = Path(WORKSPACE_ROOT) / tenant.tenant.slug / f"agent-{tenant.agent.pk}" / "leak"
    assert host_link.is_symlink()
    assert exec_ok(live, tenant, "pwd", extra={"workdir": "rootlink/etc"})["output"] == "/workspace/rootlink/etc\n"
    assert_worker_healthy(live, tenant)


def test_fork_bomb_hits_the_process_limit(live, tenant):
    result = exec_ok(live, tenant, ":(){ :|:& };:; sleep 1; echo survived", extra={"timeout": 4})
    assert result["status"] == "exited"
    wait_until(lambda: not sandbox_processes(agent_uid(tenant)), timeout=10, message="the fork bomb's processes to be gone")
    assert_worker_healthy(live, tenant)


def test_memory_hog_is_stopped_by_the_address_space_limit(live, tenant):
    result = exec_ok(live, tenant, "python3 -c 'b = bytearray(3 * 1024 ** 3); print(len(b))'")
    assert result["exit_code"] != 0 and "MemoryError" in result["output"]
    assert_worker_healthy(live, tenant)


def test_output_flood_is_capped(live, tenant):
    result = exec_ok(live, tenant, "yes flood", extra={"timeout": 2})
    assert result["timed_out"] and result["truncated"]
    assert len(result["output"].encode()) < 200_100 and result["output"].endswith("flood\n")
    assert_worker_healthy(live, tenant)


def test_file_size_and_tmp_limits(live, tenant):
    result = exec_ok(live, tenant, "head -c 300M /dev/zero > big; ls -l big | awk '{print $5}'; head -c 100M /dev/zero > /tmp/t; echo tmp=$?")
    assert "268435456" in result["output"] and "tmp=1" in result["output"]
    exec_ok(live, tenant, "rm -f big")


def test_no_child_outlives_its_command(live, tenant):
    uid = agent_uid(tenant)
    result = exec_ok(live, tenant, "(sleep 300 &); nohup sleep 301 >/dev/null 2>&1 & setsid sleep 302 & echo started")
    assert result["output"] == "started\n" and result["status"] == "exited"
    wait_until(lambda: not sandbox_processes(uid), timeout=10, message="the command's children to end with it")
    timed_out = exec_ok(live, tenant, "(sleep 300 &); setsid sh -c 'trap \"\" TERM; sleep 303' & sleep 300", extra={"timeout": 1})
    assert timed_out["timed_out"]
    wait_until(lambda: not sandbox_processes(uid), timeout=10, message="every process of the sandbox to be gone")
    assert_worker_healthy(live, tenant)


def test_sandbox_runs_as_an_unprivileged_per_session_uid(live, tenant):
    result = exec_ok(live, tenant, "id -u; grep -E '^(Cap(Eff|Prm)|NoNewPrivs)' /proc/self/status; unshare -U true 2>&1 | head -1")
    assert result["output"].startswith("1000\nCapPrm:\t0000000000000000\nCapEff:\t0000000000000000")
    assert "unshare" in result["output"], "no nested user namespaces"
    if os.geteuid() == 0:
        host_dir = Path(WORKSPACE_ROOT) / tenant.tenant.slug / f"agent-{tenant.agent.pk}"
        assert host_dir.stat().st_uid == agent_uid(tenant) >= 200_000


def test_a_nearly_full_disk_stops_writers_and_refuses_new_commands(tenant, tools_settings):
    from tools.base import ToolContext
    from tools.builtins.exec import run_exec
    from tools.sandbox import SandboxSpec, sandbox_run, workspace_prepare

    context = ToolContext(tenant=tenant.tenant, agent=tenant.agent, session=None, node="test@host")
    uid = agent_uid(tenant)
    workspace = workspace_prepare(tenant_slug=tenant.tenant.slug, scope=context.scope, uid=uid)
    writer = sandbox_run(SandboxSpec(command="sleep 30", workspace=workspace, uid=uid, timeout=30))
    conf = tools_settings.BEAMCLAW_TOOLS
    tools_settings.BEAMCLAW_TOOLS = {**conf, "EXEC_MIN_FREE_DISK_MB": 10**12}
    assert writer.wait(10), "stopped within a disk check and the grace period"
    assert writer.stopped_for.startswith("the workspace disk is nearly full") and not writer.timed_out
    refused = run_exec(context, {"command": "echo hi"})
    assert refused["ok"] is False and refused["error"].startswith("not run: the workspace disk is nearly full")
    tools_settings.BEAMCLAW_TOOLS = conf
    assert run_exec(context, {"command": "echo hi"})["output"] == "hi\n"
