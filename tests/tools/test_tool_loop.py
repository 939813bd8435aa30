"""The tool loop inside runs: the fake model asks for tools (`[[tool=NAME:{json}]]`), a real worker runs
them, and the run continues with their results."""

import json
import uuid

import httpx

from beamclaw_project.infra.redis import redis_client
from sessions import events
from sessions.models import AgentSession, Message, Run, ToolCall
from sessions.runs import run_abort, run_submit
from sessions.runs.kernel import run_lease_key
from sessions.runs.step import run_step
from tenants.models import Agent
from tests.conftest import wait_until
from tests.tools.conftest import requires_bwrap, wait_for_run
from tools import runner
from tools.models import Approval


def session_for(bundle) -> AgentSession:
    return AgentSession.objects.create(tenant=bundle.tenant, agent=bundle.agent, key=f"agent:assistant:{uuid.uuid4().hex[:8]}")


def ask(session: AgentSession, text: str) -> Run:
    return run_submit(session=session, content=[{"type": "text", "text": text}], trigger="api")


def tool(name: str, tool_input: dict, key: str = "tool") -> str:
    return f"[[{key}={name}:{json.dumps(tool_input)}]]"


def transcript(session: AgentSession) -> list[tuple[str, list[str]]]:
    return [(m.role, [b["type"] for b in m.content]) for m in Message.objects.filter(session=session).order_by("seq")]


def final_text(run: Run) -> str:
    return Message.objects.filter(session=run.session, role="assistant").order_by("-seq").first().text


def event_names(run: Run) -> list[str]:
    return [e.event for e in events.read_all(run.pk)]


@requires_bwrap
def test_a_tool_call_round_trip(live, tenant, fake_requests):
    session = session_for(tenant)
    run = wait_for_run(ask(session, "run it " + tool("exec", {"command": "echo from-tool"})).pk)
    assert run.status == "succeeded", run.error
    assert final_text(run) == "Tool results: from-tool\n\n[exit code 0]"
    assert transcript(session) == [("user", ["text"]), ("assistant", ["tool_use"]), ("user", ["tool_result"]), ("assistant", ["text"])]
    assert run.step == 1
    names = event_names(run)
    assert names[0] == "run.started" and names[-1] == "run.completed"
    assert names.index("tool.call") < names.index("tool.result") < names.index("run.completed")
    call = ToolCall.objects.get(run=run)
    assert (call.name, call.status, call.output["exit_code"]) == ("exec", "succeeded", 0)
    requests = [r["body"] for r in fake_requests(20) if any("from-tool" in json.dumps(m) for m in r["body"]["messages"])]
    assert [t["name"] for t in requests[0]["tools"]][:3] == ["exec", "process", "web_fetch"]
    result_block = requests[-1]["messages"][-1]["content"][0]
    assert result_block["type"] == "tool_result" and result_block["tool_use_id"] == call.tool_use_id


@requires_bwrap
def test_calls_of_one_step_run_in_parallel_and_results_keep_their_order(live, tenant):
    session = session_for(tenant)
    text = tool("exec", {"command": "sleep 1.5; echo first"}) + " " + tool("exec", {"command": "sleep 1.5; echo second"})
    run = wait_for_run(ask(session, text).pk)
    assert final_text(run) == "Tool results: first\n\n[exit code 0]second\n\n[exit code 0]"
    first, second = ToolCall.objects.filter(run=run).order_by("id")
    assert first.started_at < second.finished_at and second.started_at < first.finished_at, "the calls overlapped"


def test_refused_calls_become_error_results_and_the_run_goes_on(live, make_tenant, fake_requests):
    bundle = make_tenant(tool_policy={"allow": [], "deny": ["group:runtime"]})
    session = session_for(bundle)
    text = tool("exec", {"command": "id"}) + " " + tool("teleport", {}) + " " + tool("web_fetch", {"url": 5})
    run = wait_for_run(ask(session, text).pk)
    assert run.status == "succeeded"
    reply = final_text(run)
    assert "Error: tool 'exec' is not available to this agent" in reply
    assert "Error: there is no tool named 'teleport'" in reply
    assert "Error: invalid input: input.url: must be of type string" in reply
    assert sorted(ToolCall.objects.filter(run=run).values_list("status", flat=True)) == ["denied", "denied", "failed"]
    offered = next(r["body"] for r in reversed(fake_requests(20)) if "teleport" in json.dumps(r["body"]["messages"][0]))
    assert "exec" not in [t["name"] for t in offered["tools"]] and "process" not in [t["name"] for t in offered["tools"]]


def test_approvals_in_the_loop(live, make_tenant):
    bundle = make_tenant(approval={"mode": "on_miss", "allowlist": ["process:list"]})
    session = session_for(bundle)
    run = ask(session, tool("process", {"action": "list"}) + " " + tool("web_fetch", {"url": "http://127.0.0.1/"}))
    wait_until(lambda: Run.objects.get(pk=run.pk).status == "awaiting_approval", timeout=15, message="the run to wait")
    approval = Approval.objects.get(tool_call__run=run)
    assert (approval.tool, approval.subject, approval.status) == ("web_fetch", "http://127.0.0.1/", "pending")
    # Events go out after the commit that made the run wait, so a moment after its status shows.
    wait_until(lambda: "approval.requested" in event_names(run), timeout=15, message="approval.requested")
    with httpx.Client(base_url=f"{live}/api", headers=bundle.headers, timeout=30) as api:
        listed = api.get("/approvals/", params={"status": "pending"}).json()["results"]
        assert [(a["id"], a["run"]) for a in listed] == [(str(approval.pk), str(run.pk))]
        api.post(f"/approvals/{approval.pk}/approve/", json={}).raise_for_status()
    run = wait_for_run(run.pk)
    assert run.status == "succeeded"
    assert "no background processes" in final_text(run) and "refused to fetch http://127.0.0.1/" in final_text(run)
    assert "approval.resolved" in event_names(run)


def test_denied_and_unanswered_approvals_tell_the_model(live, make_tenant):
    bundle = make_tenant(approval={"mode": "always", "allowlist": [], "timeout_seconds": 1})
    session = session_for(bundle)
    run = ask(session, tool("process", {"action": "list"}))
    approval = wait_until(lambda: Approval.objects.filter(tool_call__run=run).first(), timeout=15, message="approval")
    assert approval.expires_at > approval.created_at
    run = wait_for_run(run.pk)
    assert "nobody approved this process call in time" in final_text(run)
    assert Approval.objects.get(pk=approval.pk).status == "expired"

    Agent.objects.filter(pk=bundle.agent.pk).update(approval={"mode": "always", "allowlist": []})
    run = ask(session, tool("process", {"action": "list"}))
    approval = wait_until(lambda: Approval.objects.filter(tool_call__run=run).first(), timeout=15, message="approval")
    from tools.services import approval_resolve

    approval_resolve(approval_id=approval.pk, tenant=bundle.tenant, decision="deny", decided_by="ws:carol", reason="no")
    run = wait_for_run(run.pk)
    assert run.status == "succeeded" and "not run: ws:carol denied this process call (no)" in final_text(run)
    assert ToolCall.objects.get(run=run).decided_by == "ws:carol"


def test_the_step_cap_ends_a_runaway_tool_loop(live, tenant, settings):
    session = session_for(tenant)
    run = wait_for_run(ask(session, "forever " + tool("process", {"action": "list"}, key="tool_loop")).pk, timeout=60)
    cap = settings.BEAMCLAW["STEP_CAP"]
    assert run.status == "failed" and run.error_code == "step_cap", run.error
    assert ToolCall.objects.filter(run=run).count() == cap
    roles = [role for role, _ in transcript(session)]
    assert roles == ["user"] + ["assistant", "user"] * cap, "every tool_use got its tool_result"


def test_abort_while_awaiting_approval_keeps_the_transcript_valid(live, make_tenant):
    bundle = make_tenant(approval={"mode": "always", "allowlist": []})
    session = session_for(bundle)
    run = ask(session, tool("process", {"action": "list"}))
    wait_until(lambda: Run.objects.get(pk=run.pk).status == "awaiting_approval", timeout=15, message="the run to wait")
    run_abort(run=Run.objects.get(pk=run.pk))
    run = Run.objects.get(pk=run.pk)
    assert run.status == "aborted"
    assert Approval.objects.get(tool_call__run=run).status == "denied"
    assert ToolCall.objects.get(run=run).status == "denied"
    assert transcript(session) == [("user", ["text"]), ("assistant", ["tool_use"]), ("user", ["tool_result"])]
    Agent.objects.filter(pk=bundle.agent.pk).update(approval={"mode": "off", "allowlist": []})
    follow_up = wait_for_run(ask(session, "still there?").pk)
    assert follow_up.status == "succeeded" and final_text(follow_up) == "Echo: still there?"


@requires_bwrap
def test_a_redelivered_step_does_not_ask_the_model_again(live, tenant, fake_requests):
    """The reaper re-sends run_step for a running run without a lease; while the step's tool calls are in
    flight, that step drives them instead of calling the model a second time."""
    session = session_for(tenant)
    marker = f"once-{uuid.uuid4().hex}"  # other tests' messages must not count
    run = ask(session, marker + " " + tool("exec", {"command": "sleep 2; echo slow"}))
    wait_until(lambda: ToolCall.objects.filter(run=run, status="running").exists(), timeout=15, message="exec to run")
    asked = sum(marker in json.dumps(r["body"]["messages"]) for r in fake_requests(1000))
    redis_client().delete(run_lease_key(run.pk))  # what the reaper sees for a step whose worker died
    run_step(run_id=run.pk, step=0)
    assert sum(marker in json.dumps(r["body"]["messages"]) for r in fake_requests(1000)) == asked == 1
    run = wait_for_run(run.pk)
    assert final_text(run) == "Tool results: slow\n\n[exit code 0]"
    assert transcript(session) == [("user", ["text"]), ("assistant", ["tool_use"]), ("user", ["tool_result"]), ("assistant", ["text"])]


def test_a_call_whose_worker_died_is_settled_not_rerun(live, tenant):
    """A call left `running` without a lease (its worker died) is settled with an explanation by the
    housekeeping reaper; a redelivered task for it does nothing."""
    bundle = tenant
    Agent.objects.filter(pk=bundle.agent.pk).update(approval={"mode": "always", "allowlist": []})
    session = session_for(bundle)
    run = ask(session, tool("process", {"action": "list"}))
    call = wait_until(lambda: ToolCall.objects.filter(run=run, status="awaiting_approval").first(), timeout=15, message="call")
    # What a worker crash mid-call leaves behind: the call marked running, its lease gone.
    Approval.objects.filter(tool_call=call).update(status=Approval.Status.ALLOWED)
    ToolCall.objects.filter(pk=call.pk).update(status=ToolCall.Status.RUNNING)
    Run.objects.filter(pk=run.pk).update(status=Run.Status.RUNNING)
    runner.call_run("call", call.pk, node="test")  # a redelivery: not pending, so not run again
    assert ToolCall.objects.get(pk=call.pk).status == "running"
    run = wait_for_run(run.pk)
    settled = ToolCall.objects.get(pk=call.pk)
    assert settled.status == "failed" and settled.output["error"] == runner.LOST_MESSAGE
    assert "stopped before it finished" in final_text(run)


@requires_bwrap
def test_sigkilled_worker_during_exec(gateway, make_tenant, crash_recovery):
    bundle = make_tenant()
    session = session_for(bundle)
    victim = crash_recovery("tool-victim")
    try:
        run = ask(session, tool("exec", {"command": "echo started > marker; sleep 30", "yield_ms": 60000}))
        wait_until(lambda: ToolCall.objects.filter(run=run, status="running").exists(), timeout=20, message="exec to start")
        victim.kill()
    finally:
        crash_recovery("tool-rescuer")
    run = wait_for_run(run.pk, timeout=40)
    assert run.status == "succeeded"
    call = ToolCall.objects.get(run=run)
    assert call.status == "failed" and call.output["error"] == runner.LOST_MESSAGE


@requires_bwrap
def test_tools_through_the_openai_endpoint(live, tenant):
    """What a client of /v1/chat/completions sees: the final answer, streamed, after the tool round."""
    import openai

    client = openai.OpenAI(base_url=f"{live}/v1", api_key=tenant.api_key)
    text = "uname " + tool("exec", {"command": "uname -s"})
    reply = client.chat.completions.create(model="assistant", messages=[{"role": "user", "content": text}])
    assert reply.choices[0].message.content == "Tool results: Linux\n\n[exit code 0]"
    chunks = client.chat.completions.create(model="assistant", stream=True, user="tool-user",
                                            messages=[{"role": "user", "content": text}])
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed.endswith("Tool results: Linux\n\n[exit code 0]")
