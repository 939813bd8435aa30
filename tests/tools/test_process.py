"""Background processes and the `process` tool: handles, routing to the owning worker, cleanup."""

import uuid

import pytest

from sessions.models import AgentSession
from tests.conftest import wait_until
from tests.tools.conftest import exec_ok, invoke, requires_bwrap, sandbox_processes
from tools.processes import handle_node
from tools.sandbox import sandbox_uid

pytestmark = requires_bwrap


def new_session(bundle) -> AgentSession:
    return AgentSession.objects.create(tenant=bundle.tenant, agent=bundle.agent, key=f"agent:assistant:{uuid.uuid4().hex[:8]}")


def process(live, bundle, session, **tool_input) -> dict:
    response = invoke(live, bundle, "process", tool_input, session=session.pk)
    assert response.status_code == 200, response.text
    return response.json()


def start(live, bundle, session, command: str, **extra) -> dict:
    result = exec_ok(live, bundle, command, session=session.pk, extra={"background": True, **extra})
    assert result["status"] == "running", result
    return result


def background(live, bundle, session, command: str, **extra) -> str:
    return start(live, bundle, session, command, **extra)["handle"]


def test_poll_write_log_and_exit(live, tenant):
    session = new_session(tenant)
    started = start(live, tenant, session, "echo ready; read line; echo got $line; seq 1 500")
    handle = started["handle"]
    first = process(live, tenant, session, action="poll", handle=handle, wait_seconds=0 if started["output"] else 5)
    assert (started["output"] + first["output"]) == "ready\n" and first["status"] == "running"
    assert process(live, tenant, session, action="write", handle=handle, data="hello\n")["written"] == 6
    wait_until(lambda: process(live, tenant, session, action="poll", handle=handle)["status"] == "exited",
               timeout=10, message="the process to exit")
    assert process(live, tenant, session, action="log", handle=handle, lines=2)["output"] == "500\n"
    assert "got hello" in process(live, tenant, session, action="log", handle=handle, lines=1000)["output"]
    final = process(live, tenant, session, action="poll", handle=handle)
    assert final["exit_code"] == 0 and final["output"] == ""
    write_after = process(live, tenant, session, action="write", handle=handle, data="x")
    assert write_after["ok"] is False and "exited" in write_after["error"]
    listing = process(live, tenant, session, action="list")
    assert [(p["handle"], p["status"], p["exit_code"]) for p in listing["processes"]] == [(handle, "exited", 0)]


def test_kill_ends_the_whole_sandbox(live, tenant):
    session = new_session(tenant)
    handle = background(live, tenant, session, "sleep 300 & sleep 301")
    uid = sandbox_uid(tenant_slug=tenant.tenant.slug, scope=str(session.pk))
    wait_until(lambda: len(sandbox_processes(uid)) >= 2, timeout=5, message="the processes to start")
    assert "being stopped" in process(live, tenant, session, action="kill", handle=handle)["output"]
    wait_until(lambda: not sandbox_processes(uid), timeout=10, message="every process of the sandbox to end")
    polled = process(live, tenant, session, action="poll", handle=handle)
    assert polled["status"] == "exited" and polled["exit_code"] == 143


def test_handles_are_scoped_to_their_session_and_tenant(live, tenant, make_tenant):
    session = new_session(tenant)
    handle = background(live, tenant, session, "sleep 30", timeout=5)
    other_session = new_session(tenant)
    stranger = process(live, tenant, other_session, action="kill", handle=handle)
    assert stranger["ok"] is False and "no background process" in stranger["error"]
    other = make_tenant()
    foreign = invoke(live, other, "process", {"action": "kill", "handle": handle}).json()
    assert foreign["ok"] is False and "no background process" in foreign["error"]
    assert process(live, tenant, session, action="poll", handle=handle)["status"] == "running"
    missing = invoke(live, tenant, "process", {"action": "poll"}, session=session.pk)
    assert missing.status_code == 400 and "input.handle" in missing.text


def test_lifetime_and_session_end_clean_up(live, tenant):
    session = new_session(tenant)
    short = background(live, tenant, session, "sleep 300", timeout=1)
    long = background(live, tenant, session, "sleep 300")
    wait_until(lambda: process(live, tenant, session, action="poll", handle=short)["status"] == "exited",
               timeout=10, message="the process to reach its timeout")
    assert process(live, tenant, session, action="poll", handle=short)["timed_out"] is True
    AgentSession.objects.filter(pk=session.pk).update(status=AgentSession.Status.CLOSED)
    wait_until(lambda: process(live, tenant, session, action="poll", handle=long)["status"] == "exited",
               timeout=10, message="the closed session's process to be killed")
    uid = sandbox_uid(tenant_slug=tenant.tenant.slug, scope=str(session.pk))
    wait_until(lambda: not sandbox_processes(uid), timeout=10, message="its sandbox to be gone")


def test_background_processes_per_session_are_capped(live, tenant, tools_settings):
    session = new_session(tenant)
    for _ in range(tools_settings.BEAMCLAW_TOOLS["EXEC_MAX_BACKGROUND_PER_SESSION"]):
        background(live, tenant, session, "sleep 300")
    refused = exec_ok(live, tenant, "echo one more", session=session.pk)
    assert refused["ok"] is False and "already has 8 background processes" in refused["error"]
    AgentSession.objects.filter(pk=session.pk).update(status=AgentSession.Status.CLOSED)
    uid = sandbox_uid(tenant_slug=tenant.tenant.slug, scope=str(session.pk))
    wait_until(lambda: not sandbox_processes(uid), timeout=15, message="the closed session's processes to end")


@pytest.mark.timeout(120)
def test_process_calls_reach_the_worker_that_owns_the_process(live, tenant, workers):
    second = workers.spawn("tools-second")
    owned: dict[str, tuple[str, AgentSession]] = {}  # node -> (handle, session)
    try:
        for _ in range(40):
            session = new_session(tenant)
            handle = background(live, tenant, session, "read x; echo got $x", timeout=60)
            owned.setdefault(handle_node(handle), (handle, session))
            if len(owned) == 2:
                break
        assert len(owned) == 2, "both workers should have taken some exec calls"
        for handle, session in owned.values():
            assert process(live, tenant, session, action="write", handle=handle, data="hi\n", eof=True)["ok"]
            wait_until(lambda: process(live, tenant, session, action="poll", handle=handle)["status"] == "exited",
                       timeout=10, message=f"{handle} to exit")
            assert process(live, tenant, session, action="log", handle=handle)["output"] == "got hi\n"
        while True:  # a process that is still running on the second worker when it goes away
            session = new_session(tenant)
            survivor = background(live, tenant, session, "sleep 300")
            if handle_node(survivor).startswith("tools-second"):
                break
    finally:
        second.kill()  # a crash: nothing of that worker records anything any more
    gone = process(live, tenant, session, action="poll", handle=survivor)
    assert gone["ok"] is False and "has stopped" in gone["error"]
    assert [p["status"] for p in process(live, tenant, session, action="list")["processes"]] == ["lost"]
    uid = sandbox_uid(tenant_slug=tenant.tenant.slug, scope=str(session.pk))
    wait_until(lambda: not sandbox_processes(uid, running=True), timeout=10, message="the dead worker's sandbox to be gone too")
