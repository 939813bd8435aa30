"""Attack: exhaust the worker from inside one sandbox: hold 4 x 900 MB of memory (each process under its
own 1 GiB address-space limit), or write 1.3 GB into the workspace in 256 MB files (each under the
per-file limit). Limits now hold for a session's sandboxes together (memory cgroup) and for the
workspace as a whole (EXEC_WORKSPACE_MB), and the command, not the worker, takes the failure."""

import pytest

from tests.tools.conftest import _remove_workspaces, assert_worker_healthy, exec_ok, requires_bwrap, tools_settings  # noqa: F401
from tools.sandbox import cgroups

pytestmark = requires_bwrap

HOLD_900_MB = (
    "python3 -c 'import time; b = bytearray(900 * 1024 ** 2); b[::4096] = b\"x\" * len(b[::4096]); "
    "print(\"held\", flush=True); time.sleep(3)'"
)


@pytest.mark.skipif(not cgroups().bases, reason="no usable cgroups on this machine (manage.py doctor says why)")
def test_four_processes_of_900_mb_do_not_all_get_their_memory(live, tenant, tools_settings):
    session_mb = tools_settings.BEAMCLAW_TOOLS["EXEC_SESSION_MEMORY_MB"]
    assert 4 * 900 > session_mb
    # The whole command is the subject, so the call waits for its end: on a loaded machine the four
    # allocations and the OOM kills can outlast the default yield window, which would background it.
    command = f"for i in 1 2 3 4; do {HOLD_900_MB} & done; wait; echo end"
    result = exec_ok(live, tenant, command, extra={"timeout": 120, "yield_ms": 120_000}, timeout=130)
    assert result["ok"] is False, result
    assert result["error"].startswith(f"out of memory: this session's sandboxes may use {session_mb} MB together")
    assert result["output"].count("held") < 4
    assert "process tool, action kill" in result["output"], "the command's output says what happened"
    assert_worker_healthy(live, tenant)


def test_a_workspace_cannot_grow_past_its_cap(live, tenant, tools_settings):
    cap_mb = tools_settings.BEAMCLAW_TOOLS["EXEC_WORKSPACE_MB"]
    assert 1300 > cap_mb
    flood = exec_ok(live, tenant, "for i in 1 2 3 4 5; do head -c 260M /dev/zero > f$i; echo wrote $i $?; done",
                    extra={"timeout": 300, "yield_ms": 120_000}, timeout=130)  # waits for the end even on a loaded machine
    assert flood["ok"] is False, flood
    assert f"the workspace is over its {cap_mb} MB cap" in flood["error"]
    assert "wrote 5 0" not in flood["output"], "the last 260 MB never made it"

    # Over its cap, the workspace still runs commands, but none can grow a file: deleting is the way out.
    blocked = exec_ok(live, tenant, "head -c 1M /dev/zero > more; echo rc=$?; du -sm . | cut -f1")
    assert "rc=153" in blocked["output"] and "File size limit exceeded" in blocked["output"], blocked
    assert blocked["warning"].startswith(f"the workspace is over its {cap_mb} MB cap")
    assert "delete files in /workspace" in blocked["warning"]
    assert exec_ok(live, tenant, "rm -f f* more")["exit_code"] == 0
    writable = exec_ok(live, tenant, "head -c 1M /dev/zero > more; echo rc=$?")
    assert writable["ok"] and writable["output"] == "rc=0\n" and "warning" not in writable, writable
    assert_worker_healthy(live, tenant)


def test_doctor_says_what_bounds_the_sandbox(capsys):
    from django.core.management import CommandError, call_command

    try:
        call_command("doctor")
    except CommandError:
        pass  # doctor checks the whole stack; a FAIL elsewhere (no worker in this test) does not hide this line
    report = capsys.readouterr().out
    line = next(line for line in report.splitlines() if "sandbox memory and processes" in line)
    if cgroups().bases:
        assert line.startswith("ok") and f"cgroup v{cgroups().version}" in line and "per session" in line
    else:
        assert line.startswith("WARN") and "Fallback: rlimits only" in line
    assert "MB per workspace by accounting" in report
