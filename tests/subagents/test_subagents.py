"""Sub-agents: the `group:sessions` tools driven by the fake model (`[[tool=sessions_spawn:{...}]]`), a real
worker running parent and child runs, and the announcement of a child's result to its parent."""

import json
import uuid

import httpx
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from websockets.sync.client import connect

from sessions import events
from sessions.models import AgentSession, Message, Run, ToolCall
from sessions.runs import run_abort, run_submit
from sessions.serializers import SessionSerializer
from sessions.subagents import PARENT_ABORTED
from tenants.models import Agent
from tests.conftest import wait_until
from tools.models import Approval

ANNOUNCED = "[sub-agent "


def new_session(bundle, **fields) -> AgentSession:
    return AgentSession.objects.create(
        tenant=bundle.tenant, agent=bundle.agent, key=f"agent:assistant:{uuid.uuid4().hex[:8]}", **fields
    )


def ask(session: AgentSession, text: str) -> Run:
    return run_submit(session=session, content=[{"type": "text", "text": text}], trigger=Run.Trigger.API)


def tool(name: str, tool_input: dict) -> str:
    return f"[[tool={name}:{json.dumps(tool_input)}]]"


def finished(run_id, timeout: float = 30) -> Run:
    def done():
        run = Run.objects.get(pk=run_id)
        return run if run.is_terminal else None

    return wait_until(done, timeout=timeout, message=f"run {run_id} to finish")


def spawn_result(parent_run: Run) -> dict:
    """The output of the parent's (first) sessions_spawn call, once it settled."""
    def settled():
        call = ToolCall.objects.filter(run=parent_run, name="sessions_spawn").order_by("id").first()
        return call if call is not None and call.output is not None else None

    return wait_until(settled, timeout=30, message="the spawn call to settle").output


def announcements(session: AgentSession) -> list[Message]:
    """The parent's transcript messages carrying a sub-agent's announcement (merged into another turn or not)."""
    return [m for m in Message.objects.filter(session=session, role="user").order_by("seq") if ANNOUNCED in m.text]


def answered_announcement(parent: AgentSession) -> Run:
    """The parent run that answered the announcement: its own run, or the run it steered into (which took it in
    with a step's tool results, a message of no run's own)."""
    def answered():
        if not announcements(parent):
            return None
        for announcing in Run.objects.filter(session=parent, trigger=Run.Trigger.SUBAGENT).order_by("created_at"):
            merged_into = announcing.params.get("merged_into")
            answering = Run.objects.get(pk=merged_into) if merged_into else announcing
            if answering.is_terminal:
                return answering
        return None

    return wait_until(answered, timeout=60, message="a parent run to answer the announcement")


def test_a_child_s_reply_is_not_streamed_delta_by_delta(live, tenant):
    """The parent reads a child's reply whole, in its announcement, so the child's deltas travel joined
    (sessions/runs/delta_window.py): the model sent 6 deltas 20 ms apart."""
    parent = new_session(tenant)
    task = "one two three four five [[delay_ms=20]]"
    parent_run = ask(parent, "delegate " + tool("sessions_spawn", {"task": task, "label": "paced"}))
    result = spawn_result(parent_run)
    assert result["ok"], result
    child_run = finished(result["output"]["run_id"])
    assert child_run.status == "succeeded", child_run.error
    deltas = [e.payload["text"] for e in events.read_all(child_run.pk) if e.event == events.TEXT_DELTA]
    assert "".join(deltas) == "Echo: one two three four five" and len(deltas) <= 2


def _first_text(body: dict) -> str:
    """The text that opens a request's first message. The fake's log holds other tests' requests too, whose
    first message may open with something else (an image, a tool result), or that the fake refused."""
    if not body["messages"]:
        return ""
    content = body["messages"][0]["content"]
    if isinstance(content, str):
        return content
    return content[0].get("text", "") if content else ""


def test_spawn_returns_at_once_and_the_parent_hears_the_result_once(live, tenant, fake_requests):
    parent = new_session(tenant)
    task = "count the stars [[reply=There are 42 stars.]]"
    parent_run = ask(parent, "delegate " + tool("sessions_spawn", {"task": task, "label": "stars"}))

    result = spawn_result(parent_run)
    assert result["ok"], result
    out = result["output"]
    # The call returned while the child's run had not even finished: nothing waited for it.
    assert out["status"] in ("queued", "running")
    child = AgentSession.objects.get(pk=out["session_id"])
    assert child.key == out["session_key"] and child.key.startswith("agent:assistant:subagent:")
    assert len(child.key.rsplit(":", 1)[1]) == 8
    assert (child.parent_id, child.spawned_by_id, child.label, child.tenant_id) == (parent.pk, parent_run.pk, "stars", parent.tenant_id)
    child_run = finished(out["run_id"])
    assert (child_run.status, child_run.trigger, child_run.session_id) == ("succeeded", "subagent", child.pk)

    answer = answered_announcement(parent)
    assert answer.status == "succeeded"
    [announcement] = announcements(parent)
    assert announcement.text.endswith(f'[sub-agent "stars" ({child.key}) finished: succeeded]\nThere are 42 stars.')
    assert Run.objects.get(pk=child_run.pk).announced_at is not None
    # The model answering the parent's next turn saw the child's result.
    seen = [r["body"] for r in fake_requests(100) if "There are 42 stars." in json.dumps(r["body"]["messages"])
            and _first_text(r["body"]).startswith("delegate")]
    assert seen, "a parent request carried the announcement"
    reply = Message.objects.filter(run=answer, role="assistant").order_by("-seq").first()
    assert "There are 42 stars." in reply.text
    # The child was told who it works for, through its run's extra system prompt.
    child_request = next(r["body"] for r in fake_requests(100) if _first_text(r["body"]) == task)
    assert parent.key in child_request["system"] and "sub-agent" in child_request["system"]


def test_a_result_arriving_while_the_parent_run_is_active_joins_it(live, make_tenant, fake_requests):
    # The parent's second call waits for an approval, so its run is active when the child's result arrives.
    bundle = make_tenant(approval={"mode": "on_miss", "allowlist": ["sessions_spawn"]})
    parent = new_session(bundle)
    parent_run = ask(parent, tool("sessions_spawn", {"task": "quick [[reply=quick result]]"}) + " "
                     + tool("web_fetch", {"url": "https://example.com/"}))
    child_run_id = spawn_result(parent_run)["output"]["run_id"]
    wait_until(lambda: Run.objects.get(pk=child_run_id).announced_at is not None, timeout=30, message="the announcement")
    steer = Run.objects.get(session=parent, trigger="subagent")
    assert (steer.status, Run.objects.get(pk=parent_run.pk).status) == ("queued", "awaiting_approval")

    approval = Approval.objects.get(tool_call__run=parent_run)
    assert httpx.post(f"{live}/api/approvals/{approval.pk}/deny/", headers=bundle.headers, json={}).status_code == 200
    assert finished(parent_run.pk).status == "succeeded"
    steer.refresh_from_db()
    assert (steer.status, steer.params["merged_into"]) == ("succeeded", str(parent_run.pk))
    # The announcement went in with the tool results, into the run that was going on: no run of its own.
    [announcement] = announcements(parent)
    assert [b["type"] for b in announcement.content] == ["tool_result", "tool_result", "text"]
    assert Message.objects.filter(run=parent_run, role="assistant", seq__gt=announcement.seq).exists()
    last_request = [r["body"] for r in fake_requests(50) if "quick result" in json.dumps(r["body"]["messages"])][-1]
    assert "finished: succeeded]\nquick result" in last_request["messages"][-1]["content"][-1]["text"]
    assert set(Run.objects.filter(session=parent).values_list("pk", flat=True)) == {parent_run.pk, steer.pk}


def test_a_child_whose_worker_is_killed_mid_reply_is_announced_exactly_once(gateway, tenant, crash_recovery, fake_llm):
    """A crash-recovery test: leases of 2 s (CRASH_RECOVERY_TIMINGS), so the rescuer takes the step over soon.
    Nobody follows the child's run, so its step asks the model for the reply whole (5 s to write it)."""
    victim = crash_recovery("victim")
    parent = new_session(tenant)
    words = " ".join(f"w{i}" for i in range(40)) + f" {uuid.uuid4().hex}"
    parent_run = ask(parent, tool("sessions_spawn", {"task": f"{words} [[deltas=50]][[delay_ms=100]]"}))
    child_run_id = spawn_result(parent_run)["output"]["run_id"]

    def child_asked() -> bool:
        received = httpx.get(f"{fake_llm}/_fake/requests", params={"limit": 100}).json()
        return any(words in json.dumps(r["body"]) and r["body"].get("stream") is False for r in received)

    try:
        wait_until(child_asked, timeout=30, message="the model to be writing the child's reply")
        victim.kill()
        assert Run.objects.get(pk=child_run_id).status == Run.Status.RUNNING
    finally:
        crash_recovery("rescuer")

    child_run = finished(child_run_id, timeout=60)
    assert child_run.status == "succeeded"
    answer = answered_announcement(parent)
    assert answer.status == "succeeded"
    [announcement] = announcements(parent)
    assert announcement.text.endswith(f"finished: succeeded]\nEcho: {words}")
    assert Run.objects.get(pk=child_run_id).announced_at is not None


def test_a_finished_child_whose_signal_was_lost_is_announced_by_the_sweep(live, tenant):
    """The state a worker killed between a child run's commit and its run_finished signal leaves behind:
    the run is finished, nothing announced it. The workers' housekeeping sweep does, once."""
    parent = new_session(tenant)
    child = AgentSession.objects.create(
        tenant=tenant.tenant, agent=tenant.agent, key=f"agent:assistant:subagent:{uuid.uuid4().hex[:8]}",
        parent=parent, label="orphan",
    )
    now = timezone.now()
    run = Run.objects.create(
        tenant=tenant.tenant, session=child, status=Run.Status.SUCCEEDED, trigger=Run.Trigger.SUBAGENT,
        input=[{"type": "text", "text": "task"}], started_at=now, finished_at=now,
    )
    Message.objects.create(session=child, seq=1, role="user", content=run.input, run=run)
    Message.objects.create(session=child, seq=2, role="assistant", content=[{"type": "text", "text": "all done"}], run=run, step=0)

    answer = answered_announcement(parent)
    assert answer.status == "succeeded" and answer.trigger == "subagent"
    [announcement] = announcements(parent)
    assert announcement.text == f'[sub-agent "orphan" ({child.key}) finished: succeeded]\nall done'


def test_a_sub_agent_cannot_spawn(live, tenant):
    parent = new_session(tenant)
    child = AgentSession.objects.create(
        tenant=tenant.tenant, agent=tenant.agent, key=f"agent:assistant:subagent:{uuid.uuid4().hex[:8]}", parent=parent,
    )
    run = finished(ask(child, tool("sessions_spawn", {"task": "go deeper"})).pk)
    assert run.status == "succeeded"
    call = ToolCall.objects.get(run=run)
    assert call.status == "failed"
    assert call.output["error"] == "sub-agents cannot spawn sub-agents (depth limit 1)"
    assert not AgentSession.objects.filter(parent=child).exists()
    assert "depth limit 1" in Message.objects.filter(run=run, role="assistant").order_by("-seq").first().text


def test_a_request_without_a_session_cannot_spawn(live, tenant):
    """/v1/chat/completions without `user` runs in a session that closes with the request: the child's result
    would have nowhere to go, so the spawn is refused, saying what to send instead."""
    response = httpx.post(
        f"{live}/v1/chat/completions", headers=tenant.headers, timeout=30,
        json={"model": "assistant", "messages": [{"role": "user", "content": tool("sessions_spawn", {"task": "x"})}]},
    )
    assert response.status_code == 200, response.text
    assert "sub-agents need a persistent session" in response.json()["choices"][0]["message"]["content"]
    assert "X-Session-Key" in response.json()["choices"][0]["message"]["content"]
    assert not AgentSession.objects.filter(tenant=tenant.tenant, parent__isnull=False).exists()


def test_the_cap_on_running_children_is_refused_by_name(live, tenant):
    parent = new_session(tenant)
    slow = " ".join(f"w{i}" for i in range(20)) + " [[deltas=20]][[delay_ms=250]]"
    calls = " ".join(tool("sessions_spawn", {"task": slow, "label": f"c{i}"}) for i in range(6))
    parent_run = finished(ask(parent, calls).pk)
    try:
        outputs = [c.output for c in ToolCall.objects.filter(run=parent_run).order_by("id")]
        refused = [o for o in outputs if not o["ok"]]
        assert len(refused) == 1 and sum(o["ok"] for o in outputs) == 5, outputs
        assert "already has 5 running sub-agents, the cap is 5" in refused[0]["error"]
        assert AgentSession.objects.filter(parent=parent).count() == 5
    finally:
        for run in Run.objects.filter(session__parent=parent, status__in=("queued", "running")):
            run_abort(run=run)


def test_aborting_the_parent_run_aborts_its_children(live, make_tenant):
    # The parent waits on an approval for its second call, so its run is still going when it is aborted.
    bundle = make_tenant(approval={"mode": "on_miss", "allowlist": ["sessions_spawn"]})
    parent = new_session(bundle)
    slow = " ".join(f"w{i}" for i in range(40)) + " [[deltas=40]][[delay_ms=250]]"
    parent_run = ask(parent, tool("sessions_spawn", {"task": slow}) + " " + tool("web_fetch", {"url": "https://example.com/"}))
    child_run_id = spawn_result(parent_run)["output"]["run_id"]
    wait_until(lambda: Run.objects.get(pk=child_run_id).status == "running", timeout=30, message="the child to run")
    assert Run.objects.get(pk=parent_run.pk).status == "awaiting_approval"

    response = httpx.post(f"{live}/api/runs/{parent_run.pk}/abort/", headers=bundle.headers, timeout=30)
    assert response.status_code in (200, 202), response.text
    child_run = finished(child_run_id)
    assert (child_run.status, child_run.error) == ("aborted", PARENT_ABORTED)
    # Settled once and for all: the child's end is not announced, the parent the user stopped stays stopped.
    wait_until(lambda: Run.objects.get(pk=child_run_id).announced_at is not None, timeout=30, message="the child's end to be settled")
    assert announcements(parent) == []
    assert not Run.objects.filter(session=parent).exclude(pk=parent_run.pk).exists()


def test_a_failing_child_is_announced_as_a_failure(live, tenant):
    parent = new_session(tenant)
    parent_run = ask(parent, tool("sessions_spawn", {"task": "break [[status=400]]", "label": "breaker"}))
    child_run = finished(spawn_result(parent_run)["output"]["run_id"])
    assert child_run.status == "failed"
    answer = answered_announcement(parent)
    assert answer.status == "succeeded"
    [announcement] = announcements(parent)
    assert '[sub-agent "breaker"' in announcement.text and "finished: failed]\nerror: " in announcement.text
    assert child_run.error in announcement.text


def test_rest_and_websocket_show_the_tree(live, tenant):
    parent = new_session(tenant)
    parent_run = ask(parent, tool("sessions_spawn", {"task": "hi", "label": "greeter"}))
    out = spawn_result(parent_run)["output"]
    finished(out["run_id"])
    api = httpx.Client(base_url=f"{live}/api", headers=tenant.headers, timeout=30)
    body = api.get(f"/sessions/{parent.pk}/").json()
    assert (body["parent"], body["children"], body["label"], body["spawned_by"]) == (None, [out["session_id"]], "", None)
    body = api.get(f"/sessions/{out['session_id']}/").json()
    assert (body["parent"], body["children"], body["label"], body["spawned_by"]) == (str(parent.pk), [], "greeter", str(parent_run.pk))
    listed = {s["id"]: s for s in api.get("/sessions/").json()["results"]}
    assert listed[str(parent.pk)]["children"] == [out["session_id"]]
    assert listed[out["session_id"]]["parent"] == str(parent.pk)

    with connect(live.replace("http://", "ws://") + "/ws/", open_timeout=10) as ws:
        ws.send(json.dumps({"type": "req", "id": "1", "method": "connect", "params": {"token": tenant.api_key}}))
        ws.send(json.dumps({"type": "req", "id": "2", "method": "sessions.list", "params": {}}))
        reply = next(frame for frame in map(json.loads, iter(lambda: ws.recv(timeout=20), None)) if frame.get("id") == "2")
    listed = {s["id"]: s for s in reply["payload"]["sessions"]}
    assert listed[str(parent.pk)]["children"] == [out["session_id"]]
    assert (listed[out["session_id"]]["parent"], listed[out["session_id"]]["label"]) == (str(parent.pk), "greeter")


def test_a_list_of_sessions_fetches_children_in_one_query(tenant):
    parents = [new_session(tenant) for _ in range(3)]
    for parent in parents:
        for _ in range(2):
            AgentSession.objects.create(tenant=tenant.tenant, agent=tenant.agent, parent=parent,
                                        key=f"agent:assistant:subagent:{uuid.uuid4().hex[:8]}")
    sessions = AgentSession.objects.filter(tenant=tenant.tenant).select_related("agent")
    with CaptureQueriesContext(connection) as queries:
        data = SessionSerializer(sessions, many=True).data
    assert len(queries) == 2, [q["sql"] for q in queries]
    by_id = {s["id"]: s for s in data}
    for parent in parents:
        assert sorted(by_id[str(parent.pk)]["children"]) == sorted(str(c.pk) for c in parent.children.all())


def invoke(live, bundle, tool_name: str, tool_input: dict, session) -> httpx.Response:
    return httpx.post(
        f"{live}/api/tools/invoke", headers=bundle.headers, timeout=60,
        json={"agent": "assistant", "tool": tool_name, "input": tool_input, "session": str(session.pk)},
    )


def test_list_history_and_send_stay_in_the_tree(live, tenant):
    parent = new_session(tenant)
    parent_run = ask(parent, tool("sessions_spawn", {"task": "remember the word lighthouse", "label": "memo"}))
    out = spawn_result(parent_run)["output"]
    finished(out["run_id"])
    answered_announcement(parent)
    child = AgentSession.objects.get(pk=out["session_id"])

    listing = invoke(live, tenant, "sessions_list", {}, parent).json()
    assert listing["ok"] and listing["output"]["parent"] is None
    [entry] = listing["output"]["children"]
    assert (entry["key"], entry["label"], entry["status"]) == (child.key, "memo", "succeeded")
    assert invoke(live, tenant, "sessions_list", {}, child).json()["output"]["parent"]["key"] == parent.key

    history = invoke(live, tenant, "sessions_history", {"session": child.key}, parent).json()
    assert history["ok"] and "user: remember the word lighthouse" in history["output"]
    assert "assistant: Echo: remember the word lighthouse" in history["output"]
    assert invoke(live, tenant, "sessions_history", {"session": str(parent.pk)}, child).json()["ok"]

    stranger = new_session(tenant)
    for caller, ref in ((parent, stranger.key), (child, str(stranger.pk)), (stranger, child.key)):
        refused = invoke(live, tenant, "sessions_history", {"session": ref}, caller).json()
        assert not refused["ok"] and "among yourself, your parent and your sub-agents" in refused["error"]

    sent = invoke(live, tenant, "sessions_send", {"session": child.key, "message": "and now the word harbor"}, parent).json()
    assert sent["ok"], sent
    run = finished(sent["output"]["run_id"])
    assert (run.session_id, run.trigger, run.status) == (child.pk, "subagent", "succeeded")
    assert run.input[0]["text"] == f"[message from parent session {parent.key}]\nand now the word harbor"
    # The child's answer comes back to the parent like its first result did.
    wait_until(lambda: len(announcements(parent)) == 2, timeout=60, message="the reply to be announced")
    assert "and now the word harbor" in announcements(parent)[-1].text


def test_another_tenant_cannot_see_or_reach_a_child(live, tenant, make_tenant):
    parent = new_session(tenant)
    out = spawn_result(ask(parent, tool("sessions_spawn", {"task": "secret work"})))["output"]
    other = make_tenant()
    theirs = new_session(other)
    for tool_name, tool_input in (("sessions_history", {"session": out["session_id"]}),
                                  ("sessions_history", {"session": out["session_key"]}),
                                  ("sessions_send", {"session": out["session_id"], "message": "hello"})):
        refused = invoke(live, other, tool_name, tool_input, theirs).json()
        assert not refused["ok"] and "no session" in refused["error"], refused
    assert httpx.get(f"{live}/api/sessions/{out['session_id']}/", headers=other.headers).status_code == 404
    assert invoke(live, other, "sessions_list", {}, parent).status_code == 404
    assert not Run.objects.filter(session_id=out["session_id"]).exclude(pk=out["run_id"]).exists()


def test_spawn_refuses_an_unknown_agent_and_runs_another_of_the_tenant(live, tenant):
    Agent.objects.create(tenant=tenant.tenant, slug="researcher", model="claude-test", system_prompt="You research.")
    parent = new_session(tenant)
    refused = invoke(live, tenant, "sessions_spawn", {"task": "x", "agent": "nobody"}, parent).json()
    assert not refused["ok"] and "there is no agent 'nobody'" in refused["error"] and "researcher" in refused["error"]
    spawned = invoke(live, tenant, "sessions_spawn", {"task": "find it", "agent": "researcher"}, parent).json()
    assert spawned["ok"], spawned
    assert spawned["output"]["session_key"].startswith("agent:researcher:subagent:")
    child = AgentSession.objects.get(pk=spawned["output"]["session_id"])
    # Spawned through the API, not by a run: no spawning run, the rest as from a model's call.
    assert (child.agent.slug, child.parent_id, child.spawned_by_id) == ("researcher", parent.pk, None)
    assert finished(spawned["output"]["run_id"]).status == "succeeded"
