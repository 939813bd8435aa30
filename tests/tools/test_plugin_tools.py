"""Tools are plug-ins: a module in BEAMCLAW_PLUGINS registers a tool (tools.registry.register) that agents
use without the runner or the run engine knowing it. Such a tool may answer Deferred: its call stays open,
holding no worker, until an outside event settles it or its deadline passes (the seam sub-agents use)."""

import uuid

from beamclaw_project.infra.redis import redis_client
from sessions.models import AgentSession, Message, Run, ToolCall
from sessions.runs import run_abort, run_submit
from tests.conftest import wait_until
from tests.tools.conftest import wait_for_run
from tools import runner

PLUGINS = ["tests.fakes.deferred_tool"]  # loaded by the worker only: importing it here would register it here too


def waiting_call_key(session_id) -> str:
    return f"bc:test:deferred:{session_id}"  # where tests/fakes/deferred_tool.py leaves its call's reference


def ask_to_wait(bundle, timeout_seconds: float) -> Run:
    session = AgentSession.objects.create(tenant=bundle.tenant, agent=bundle.agent, key=f"agent:assistant:{uuid.uuid4().hex[:8]}")
    text = f'wait [[tool=wait_for_signal:{{"timeout_seconds": {timeout_seconds}}}]]'
    return run_submit(session=session, content=[{"type": "text", "text": text}], trigger="api")


def final_text(run: Run) -> str:
    return Message.objects.filter(session=run.session, role="assistant").order_by("-seq").first().text


def test_a_deferred_call_stays_open_until_an_outside_event_settles_it(live, plugin_worker, make_tenant, fake_requests):
    bundle = make_tenant(tool_policy={"allow": ["wait_for_signal"]})
    run = ask_to_wait(bundle, 600)
    call = wait_until(lambda: ToolCall.objects.filter(run=run, status="running").first(), timeout=30, message="the call to start")
    lease_key = runner.lease_key("call", call.pk)
    # The worker handed the call over: no token of a worker in the lease, a deadline instead.
    wait_until(lambda: (redis_client().get(lease_key) or b"").startswith(b"deferred:"), timeout=30, message="the call to be deferred")
    assert Run.objects.get(pk=run.pk).status == "running"
    offered = [r["body"] for r in fake_requests(20) if "wait_for_signal" in str(r["body"].get("messages"))]
    assert [t["name"] for t in offered[0]["tools"]] == ["wait_for_signal"]

    kind, call_id = redis_client().get(waiting_call_key(run.session_id)).decode().split(":")
    assert (kind, call_id) == ("call", str(call.pk)), "the tool knows which call it left open"
    runner.call_settle(kind, call.pk, {"ok": True, "output": "the signal arrived"})
    finished = wait_for_run(run.pk)
    assert finished.status == "succeeded", finished.error
    assert final_text(finished) == "Tool results: the signal arrived"
    assert redis_client().get(lease_key) is None
    runner.call_settle("call", call.pk, {"ok": True, "output": "a late second signal"})
    assert ToolCall.objects.get(pk=call.pk).output["output"] == "the signal arrived", "settling is idempotent"


def test_a_deferred_call_nobody_settles_fails_at_its_deadline(live, plugin_worker, make_tenant):
    bundle = make_tenant(tool_policy={"allow": ["wait_for_signal"]})
    run = ask_to_wait(bundle, 0)
    # The workers' housekeeping (every BEAMCLAW_HOUSEKEEPING_SECONDS) finds the deadline passed.
    finished = wait_for_run(run.pk, timeout=60)
    call = ToolCall.objects.get(run=finished)
    assert call.status == "failed"
    assert call.output["error"] == "no result arrived before the call's deadline; it was given up"
    assert finished.status == "succeeded" and "deadline" in final_text(finished), "the model was told"


def test_aborting_a_run_ends_it_without_waiting_for_its_deferred_call(live, plugin_worker, make_tenant):
    bundle = make_tenant(tool_policy={"allow": ["wait_for_signal"]})
    run = ask_to_wait(bundle, 3600)
    call = wait_until(lambda: ToolCall.objects.filter(run=run, status="running").first(), timeout=30, message="the call to start")
    run_abort(run=run, reason="changed my mind")
    aborted = Run.objects.get(pk=run.pk)
    assert (aborted.status, aborted.error) == ("aborted", "changed my mind")
    call.refresh_from_db()
    assert call.status == "failed" and "the run ended (aborted)" in call.output["error"]
    runner.call_settle("call", call.pk, {"ok": True, "output": "too late"})
    assert ToolCall.objects.get(pk=call.pk).status == "failed", "a late result changes nothing"
