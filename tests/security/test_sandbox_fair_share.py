"""Attack: one tenant takes every background place of a worker (sessions are free to create, each may
hold a few `sleep`s), so every other tenant's exec is refused. Caps now apply per session, per tenant
and per worker; a tenant's cap is its share, and a full worker never refuses a foreground command."""

import uuid

from sessions.models import AgentSession
from tests.tools.conftest import _remove_workspaces, exec_ok, invoke, requires_bwrap, tools_settings  # noqa: F401
from tools.base import ToolContext
from tools.builtins.exec import run_exec
from tools.processes import PROCESSES

pytestmark = requires_bwrap


def new_session(bundle) -> AgentSession:
    return AgentSession.objects.create(tenant=bundle.tenant, agent=bundle.agent, key=f"agent:assistant:{uuid.uuid4().hex[:8]}")


def test_a_tenant_at_its_cap_is_refused_and_other_tenants_are_not(live, make_tenant, tools_settings):
    conf = tools_settings.BEAMCLAW_TOOLS
    per_session, per_tenant = conf["EXEC_MAX_BACKGROUND_PER_SESSION"], conf["EXEC_MAX_BACKGROUND_PER_TENANT"]
    assert per_tenant < conf["EXEC_MAX_BACKGROUND_PER_WORKER"], "a tenant's share must leave room for the others"
    hostile, victim = make_tenant(), make_tenant()
    held: list[tuple[AgentSession, str]] = []
    try:
        while len(held) < per_tenant:
            session = new_session(hostile)
            for _ in range(min(per_session, per_tenant - len(held))):
                result = exec_ok(live, hostile, "sleep 300", session=session.pk, extra={"background": True})
                assert result["status"] == "running", result
                held.append((session, result["handle"]))

        extra = exec_ok(live, hostile, "sleep 300", session=new_session(hostile).pk, extra={"background": True})
        assert extra["ok"] is False
        assert extra["error"].startswith(f"this tenant already has {per_tenant} background processes running on this worker")
        assert "process tool (action kill" in extra["error"]

        assert exec_ok(live, victim, "echo mine")["output"] == "mine\n"
        own = exec_ok(live, victim, "sleep 300", extra={"background": True, "timeout": 30})
        assert own["status"] == "running", own
        assert invoke(live, victim, "process", {"action": "kill", "handle": own["handle"]}).json()["ok"]

        # Killing one of its own processes gives the hostile tenant its place back.
        session, handle = held.pop()
        assert invoke(live, hostile, "process", {"action": "kill", "handle": handle}, session=session.pk).json()["ok"]
        again = exec_ok(live, hostile, "sleep 300", session=session.pk, extra={"background": True, "yield_ms": 0})
        assert again["status"] == "running", again
        held.append((session, again["handle"]))
    finally:
        for session, handle in held:
            invoke(live, hostile, "process", {"action": "kill", "handle": handle}, session=session.pk)


def test_a_full_worker_still_runs_foreground_commands(make_tenant, tools_settings):
    """Run in this process (its own process table) with a worker total of 4 and a tenant share of 2:
    two tenants fill the worker, a third still runs commands."""
    tools_settings.BEAMCLAW_TOOLS = {
        **tools_settings.BEAMCLAW_TOOLS, "EXEC_MAX_BACKGROUND_PER_WORKER": 4, "EXEC_MAX_BACKGROUND_PER_TENANT": 2,
    }

    def context(bundle):
        return ToolContext(tenant=bundle.tenant, agent=bundle.agent, session=new_session(bundle), node="test@host")

    first, second, third = make_tenant(), make_tenant(), make_tenant()
    started = []
    try:
        for bundle in (first, second):
            for _ in range(2):
                ctx = context(bundle)
                result = run_exec(ctx, {"command": "sleep 300", "background": True})
                assert result["status"] == "running", result
                started.append((ctx, result["handle"]))
        refused = run_exec(context(first), {"command": "sleep 300", "background": True})
        assert refused["ok"] is False and refused["error"].startswith("this tenant already has 2 background processes")

        ctx = context(third)
        assert run_exec(ctx, {"command": "echo hi"})["output"] == "hi\n"
        full = run_exec(ctx, {"command": "sleep 300", "background": True})
        assert full["ok"] is False
        assert full["error"].startswith("this worker already runs 4 background processes (at most 4, shared by all tenants)")
        assert "without `background`" in full["error"]
        # Past its yield window with no place to go, a command finishes in the foreground.
        stayed = run_exec(ctx, {"command": "sleep 1; echo done; cat", "yield_ms": 0})
        assert stayed["status"] == "exited" and stayed["output"] == "done\n" and stayed["exit_code"] == 0, stayed
    finally:
        for ctx, handle in started:
            entry = PROCESSES.get(handle, tenant_id=ctx.tenant.pk, scope=ctx.scope)
            entry.process.terminate("test cleanup")
        for ctx, handle in started:
            assert PROCESSES.get(handle, tenant_id=ctx.tenant.pk, scope=ctx.scope).process.wait(30)
