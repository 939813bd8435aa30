"""Compaction: long conversations through the real worker and the fake model, compacted automatically when
the agent's threshold is crossed and on request over REST and the WebSocket.

The threshold is the agent's own setting (`Agent.compaction`), set small here so that a few runs cross it;
no timing setting is changed.
"""

import json
import time

import httpx
import pytest

from sessions import events
from sessions.models import Compaction, Message, Run
from sessions.runs.budget import tokens_used_today
from sessions.runs.compaction import SUMMARY_INSTRUCTION, SUMMARY_SYSTEM_PROMPT, content_tokens
from sessions.runs.context import SUMMARY_HEADER
from tenants.models import Agent
from tests.conftest import wait_until
from tests.sessions.test_websocket import WS

SMALL = {"threshold_tokens": 1000, "keep_recent_tokens": 300}
TOOL_CALL = '[[tool=process:{"action": "list"}]]'


def filler(tag: str, words: int = 300) -> str:
    """A user message of about `words` * 1.6 tokens, every word marked with `tag` (to find it later)."""
    return " ".join(f"{tag}{i}" for i in range(words))


class Api:
    def __init__(self, live: str, bundle):
        self.live = live
        self.bundle = bundle

    def request(self, method: str, path: str, **kwargs) -> httpx.Response:
        return httpx.request(method, f"{self.live}{path}", headers=self.bundle.headers, timeout=150, **kwargs)

    def new_session(self) -> str:
        response = self.request("POST", "/api/sessions/", json={"agent": "assistant"})
        assert response.status_code == 201, response.text
        return response.json()["id"]

    def say(self, session_id: str, text: str) -> dict:
        """Send a message and wait for its run to end; the run as the API shows it."""
        response = self.request("POST", f"/api/sessions/{session_id}/messages/", json={"content": text})
        assert response.status_code == 202, response.text
        run_id = response.json()["run"]["id"]

        def finished():
            run = self.request("GET", f"/api/runs/{run_id}/").json()
            return run if run["status"] in ("succeeded", "failed", "aborted") else None

        run = wait_until(finished, timeout=60, message=f"run {run_id} to finish")
        assert run["status"] == "succeeded", run
        return run

    def history(self, session_id: str) -> list[dict]:
        messages, url = [], f"/api/sessions/{session_id}/messages/"
        while url:
            page = self.request("GET", url.replace(self.live, "")).json()
            messages += page["results"]
            url = page["next"]
        return messages


def summarizing_requests(fake_requests, marker: str) -> list[dict]:
    """Summarizing requests that mention `marker` (the fake serves every test: markers keep them apart)."""
    return [
        r["body"] for r in fake_requests(200)
        if r["body"].get("system") == SUMMARY_SYSTEM_PROMPT and marker in json.dumps(r["body"]["messages"])
    ]


def requests_with(fake_requests, marker: str) -> list[dict]:
    """Requests of runs (not summaries) whose last user turn mentions `marker`."""
    found = []
    for record in fake_requests(200):
        body = record["body"]
        if body.get("system") == SUMMARY_SYSTEM_PROMPT:
            continue
        if marker in json.dumps(body["messages"][-1]):
            found.append(body)
    return found


def assert_pairs_whole(messages: list[dict]) -> None:
    """Every tool_result answers a tool_use of the assistant turn right before it."""
    for index, turn in enumerate(messages):
        results = [b["tool_use_id"] for b in turn["content"] if b.get("type") == "tool_result"]
        if not results:
            continue
        assert index > 0 and messages[index - 1]["role"] == "assistant", "a tool_result without the turn before it"
        uses = {b["id"] for b in messages[index - 1]["content"] if b.get("type") == "tool_use"}
        assert set(results) <= uses, f"tool_result {results} without its tool_use"


def test_a_long_conversation_is_compacted_and_the_model_sees_summary_plus_recent_turns(live, make_tenant, fake_requests):
    bundle = make_tenant(compaction=SMALL)
    api = Api(live, bundle)
    session_id = api.new_session()

    api.say(session_id, f"{TOOL_CALL} list what runs, then remember {filler('alpha', 100)}")
    tags = ["bravo", "charlie", "delta", "echo", "foxtrot"]
    compacted_at = None
    for tag in tags:
        run = api.say(session_id, filler(tag))
        if Compaction.objects.filter(session_id=session_id).exists():
            compacted_at = (tag, run)
            break
    assert compacted_at is not None, "the conversation crossed the threshold but was never compacted"
    tag, run = compacted_at
    compaction = Compaction.objects.get(session_id=session_id)

    # The cut is at the start of the run's own turn: everything before it is summarized.
    first_kept = Message.objects.get(session_id=session_id, seq=compaction.first_kept_seq)
    assert (first_kept.role, str(first_kept.run_id)) == ("user", run["id"])
    assert compaction.trigger == "auto" and compaction.model == bundle.agent.model
    assert compaction.tokens_before > SMALL["threshold_tokens"] > compaction.tokens_after
    assert compaction.usage["input_tokens"] > 0 and compaction.usage["output_tokens"] > 0

    # The summarizing request reached the model: the older turns, tool calls as text, then the instruction.
    summary_request = summarizing_requests(fake_requests, "alpha0")[-1]
    text = json.dumps(summary_request["messages"])
    assert "alpha0" in text and "[called the tool process" in text and "[tool result:" in text
    assert f"{tag}0" not in text, "the kept turn must not be summarized"
    assert "tools" not in summary_request
    assert not [b for m in summary_request["messages"] for b in m["content"] if b["type"] != "text"]
    assert summary_request["messages"][-1]["content"][-1]["text"] == SUMMARY_INSTRUCTION

    # What the model got for the run: the summary (marked) merged with the user's turn, nothing older.
    request = requests_with(fake_requests, f"{tag}0")[-1]
    assert request["messages"][0]["role"] == "user"
    assert request["messages"][0]["content"][0]["text"].startswith(SUMMARY_HEADER)
    assert compaction.summary in request["messages"][0]["content"][0]["text"]
    assert "alpha0" not in json.dumps(request["messages"])
    assert_pairs_whole(request["messages"])

    # The run's stream told clients, before the reply, and the run's usage includes the summary's.
    names = [e.event for e in events.read_all(run["id"])]
    assert events.COMPACTION in names and names.index(events.COMPACTION) < names.index(events.TEXT_DELTA)
    reply = Message.objects.get(run_id=run["id"], role="assistant")
    assert run["input_tokens"] == compaction.usage["input_tokens"] + reply.usage["input_tokens"]
    assert run["output_tokens"] == compaction.usage["output_tokens"] + reply.usage["output_tokens"]
    runs = Run.objects.filter(session_id=session_id)
    spent = sum(r.input_tokens + r.output_tokens for r in runs)
    session = api.request("GET", f"/api/sessions/{session_id}/").json()
    assert session["input_tokens"] + session["output_tokens"] == spent
    assert tokens_used_today(tenant_id=bundle.tenant.pk) == spent

    # The transcript keeps every message: the tool call pair and the summarized turns included.
    history = api.history(session_id)
    assert [m["seq"] for m in history] == list(range(1, len(history) + 1))
    assert any(b["type"] == "tool_use" for m in history for b in m["content"])
    assert any(b["type"] == "tool_result" for m in history for b in m["content"])
    assert "alpha0" in history[0]["text"]

    listed = api.request("GET", f"/api/sessions/{session_id}/compactions/").json()["results"]
    assert [c["id"] for c in listed] == [compaction.pk] and listed[0]["first_kept_seq"] == compaction.first_kept_seq


def test_a_second_compaction_folds_in_the_first_summary(live, make_tenant, fake_requests):
    bundle = make_tenant(compaction=SMALL)
    api = Api(live, bundle)
    session_id = api.new_session()
    for tag in ["golf", "hotel", "india", "juliet", "kilo", "lima", "mike"]:
        api.say(session_id, filler(tag))
        if Compaction.objects.filter(session_id=session_id).count() == 2:
            break
    first, second = Compaction.objects.filter(session_id=session_id).order_by("first_kept_seq")
    assert second.first_kept_seq > first.first_kept_seq
    kept_then = Message.objects.get(session_id=session_id, seq=first.first_kept_seq).text.split()[0]
    folded = summarizing_requests(fake_requests, kept_then)[-1]
    assert folded["messages"][0]["content"][0]["text"] == f"{SUMMARY_HEADER}\n\n{first.summary}"
    # The model sees the latest summary only (this run may well have compacted once more).
    api.say(session_id, "november and the rest")
    latest = Compaction.objects.filter(session_id=session_id).order_by("-first_kept_seq").first()
    request = requests_with(fake_requests, "november")[-1]
    assert request["messages"][0]["content"][0]["text"] == f"{SUMMARY_HEADER}\n\n{latest.summary}"
    summaries = [m for m in request["messages"] if m["content"][0].get("text", "").startswith(SUMMARY_HEADER)]
    assert summaries == [request["messages"][0]]


def test_a_failing_summary_does_not_fail_the_run(live, make_tenant, fake_requests):
    """The summarizing call fails (the fake answers it with a tool call and no text, because the turn it
    summarizes carries a tool directive): the run goes on with the whole context, the tokens are counted,
    and the session is not compacted again at the next step."""
    bundle = make_tenant(compaction={"enabled": False})
    api = Api(live, bundle)
    session_id = api.new_session()
    api.say(session_id, f"[[tool=teleport:{{}}]] {filler('yankee', 600)}")
    rows = list(Message.objects.filter(session_id=session_id).order_by("seq"))
    assert [m.role for m in rows] == ["user", "assistant", "user", "assistant"]
    # Keep the tool result and what follows it: the cut then comes right after the directive's turn, which
    # ends the summarizing request.
    follow_up = "zulu, and now?"
    keep = content_tokens(rows[3].content) + content_tokens([{"type": "text", "text": follow_up}]) + 1
    Agent.objects.filter(pk=bundle.agent.pk).update(compaction={"threshold_tokens": 1000, "keep_recent_tokens": keep})

    run = api.say(session_id, follow_up)
    assert len(summarizing_requests(fake_requests, "yankee0")) == 1
    assert not Compaction.objects.filter(session_id=session_id).exists()
    request = requests_with(fake_requests, "zulu")[-1]
    assert "yankee0" in json.dumps(request["messages"]) and request["messages"][0]["content"][0]["text"].startswith("[[tool=")
    reply = Message.objects.get(run_id=run["id"], role="assistant")
    assert run["input_tokens"] > reply.usage["input_tokens"], "the failed summary's tokens were spent too"

    api.say(session_id, "zulu again")
    assert len(summarizing_requests(fake_requests, "yankee0")) == 1, "compaction pauses after a failure"


def test_manual_compaction_over_rest(live, make_tenant, fake_requests):
    bundle = make_tenant(compaction={"enabled": False, "keep_recent_tokens": 100})
    api = Api(live, bundle)
    session_id = api.new_session()
    api.say(session_id, f"{TOOL_CALL} oscar {filler('oscar', 40)}")
    api.say(session_id, f"papa {filler('papa', 40)}")
    assert not Compaction.objects.filter(session_id=session_id).exists(), "automatic compaction is off"
    before = api.request("GET", f"/api/sessions/{session_id}/").json()

    response = api.request("POST", f"/api/sessions/{session_id}/compact/")
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) >= {"id", "first_kept_seq", "tokens_before", "tokens_after", "usage", "trigger", "summary"}
    assert body["trigger"] == "manual" and body["tokens_after"] < body["tokens_before"]
    kept = Message.objects.get(session_id=session_id, seq=body["first_kept_seq"])
    assert kept.role == "user" and "papa0" in kept.text
    # The summary's tokens count for the session and the tenant's budget.
    after = api.request("GET", f"/api/sessions/{session_id}/").json()
    assert after["input_tokens"] == before["input_tokens"] + body["usage"]["input_tokens"]
    assert after["output_tokens"] == before["output_tokens"] + body["usage"]["output_tokens"]
    spent = sum(r.input_tokens + r.output_tokens for r in Run.objects.filter(session_id=session_id))
    assert tokens_used_today(tenant_id=bundle.tenant.pk) == spent + body["usage"]["input_tokens"] + body["usage"]["output_tokens"]

    api.say(session_id, "quebec")
    request = requests_with(fake_requests, "quebec")[-1]
    assert request["messages"][0]["content"][0]["text"].startswith(SUMMARY_HEADER)
    assert "oscar0" not in json.dumps(request["messages"]) and "papa0" in json.dumps(request["messages"])
    assert_pairs_whole(request["messages"])


def test_manual_compaction_over_the_websocket(live, make_tenant):
    bundle = make_tenant(compaction={"keep_recent_tokens": 4})
    api = Api(live, bundle)
    session_id = api.new_session()
    api.say(session_id, "romeo")
    api.say(session_id, "sierra")
    client = WS(live, bundle.api_key)
    try:
        assert "sessions.compact" in client.welcome["methods"]
        reply = client.call("sessions.compact", {"session": session_id})
        assert reply["ok"], reply
        kept = Message.objects.get(session_id=session_id, seq=reply["payload"]["first_kept_seq"])
        assert (kept.role, kept.text) == ("user", "sierra")
        assert reply["payload"]["usage"]["input_tokens"] > 0
        # The kept turn alone is left: nothing more to compact.
        again = client.call("sessions.compact", {"session": session_id})
        assert not again["ok"] and again["error"]["code"] == "nothing_to_compact", again
        missing = client.call("sessions.compact", {"session": "not-an-id"})
        assert missing["error"]["code"] == "invalid_params"
    finally:
        client.close()


def test_reset_after_a_compaction_starts_the_model_afresh(live, make_tenant, fake_requests):
    """Reset archives the transcript; its compactions go with it, so the new conversation is seen whole."""
    bundle = make_tenant(compaction={"keep_recent_tokens": 4})
    api = Api(live, bundle)
    session_id = api.new_session()
    api.say(session_id, "alfa")
    api.say(session_id, "bravissimo")
    assert api.request("POST", f"/api/sessions/{session_id}/compact/").status_code == 200
    response = api.request("POST", f"/api/sessions/{session_id}/reset/")
    assert response.status_code == 200, response.text
    archive = response.json()["archived_session"]
    assert Compaction.objects.filter(session_id=archive).count() == 1
    assert not Compaction.objects.filter(session_id=session_id).exists()
    api.say(session_id, "charlie fresh start")
    request = requests_with(fake_requests, "charlie fresh start")[-1]
    assert request["messages"] == [{"role": "user", "content": [{"type": "text", "text": "charlie fresh start"}]}]


def test_compaction_refusals(live, make_tenant):
    bundle = make_tenant(compaction={"keep_recent_tokens": 4})
    api = Api(live, bundle)
    session_id = api.new_session()

    fresh = api.request("POST", f"/api/sessions/{session_id}/compact/")
    assert fresh.status_code == 409 and fresh.json()["code"] == "nothing_to_compact", fresh.text

    other = Api(live, make_tenant())
    response = other.request("POST", f"/api/sessions/{session_id}/compact/")
    assert response.status_code == 404, response.text
    assert other.request("GET", f"/api/sessions/{session_id}/compactions/").status_code == 404

    api.say(session_id, "tango")
    response = api.request("POST", f"/api/sessions/{session_id}/messages/", json={"content": "[[ttft_ms=4000]] uniform"})
    run_id = response.json()["run"]["id"]
    wait_until(lambda: Run.objects.get(pk=run_id).status == "running", timeout=10, message="the run to start")
    busy = api.request("POST", f"/api/sessions/{session_id}/compact/")
    assert busy.status_code == 409 and busy.json()["code"] == "compaction_busy", busy.text
    assert run_id in busy.json()["detail"] and "abort" in busy.json()["detail"]
    wait_until(lambda: Run.objects.get(pk=run_id).is_terminal, timeout=30, message="the slow run to end")
    assert api.request("POST", f"/api/sessions/{session_id}/compact/").status_code == 200


@pytest.mark.parametrize("value, key", [
    ({"threshold_tokens": 10}, "threshold_tokens"),
    ({"threshold_tokens": "off"}, "threshold_tokens"),
    ({"keep_recent_tokens": -1}, "keep_recent_tokens"),
    ({"threshold_tokens": 5000, "keep_recent_tokens": 5000}, "keep_recent_tokens"),
    ({"enabled": "no"}, "enabled"),
    ({"treshold_tokens": 5000}, "treshold_tokens"),
    ([], "threshold_tokens"),
])
def test_bad_compaction_settings_are_400_naming_the_key(live, tenant, value, key):
    response = httpx.patch(f"{live}/api/agents/assistant/", headers=tenant.headers, json={"compaction": value}, timeout=10)
    assert response.status_code == 400, response.text
    assert key in response.json()["compaction"][0]


def test_good_compaction_settings_are_kept(live, tenant):
    value = {"threshold_tokens": 60000, "keep_recent_tokens": 8000}
    response = httpx.patch(f"{live}/api/agents/assistant/", headers=tenant.headers, json={"compaction": value}, timeout=10)
    assert response.status_code == 200, response.text
    assert response.json()["compaction"] == value


def test_the_context_estimate_is_cheap(live, make_tenant):
    """It runs before every step: a handful of indexed queries whatever the transcript's length."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from sessions.runs.compaction import context_tokens_estimate

    bundle = make_tenant(compaction={"enabled": False})
    api = Api(live, bundle)
    session_id = api.new_session()
    for tag in ["victor", "whiskey", "xray"]:
        api.say(session_id, tag)
    with CaptureQueriesContext(connection) as queries:
        started = time.perf_counter()
        tokens = context_tokens_estimate(session_id=session_id)
        elapsed = time.perf_counter() - started
    assert tokens > 0 and len(queries) <= 3
    print(f"context estimate: {len(queries)} queries, {elapsed * 1000:.2f} ms")


def _conversation(session, turns: int, *, tool_output_chars: int, text_chars: int) -> None:
    """A transcript written as runs would have left it: user turn, tool call, tool result, reply."""
    line = "the quick brown fox jumps over the lazy dog 0123456789 "
    text = (line * (text_chars // len(line) + 1))[:text_chars]
    messages, seq = [], 0
    for turn in range(turns):
        blocks = [("user", [{"type": "text", "text": f"turn {turn}: {text}"}], {})]
        if tool_output_chars:
            use_id = f"toolu_{turn:04d}"
            blocks += [
                ("assistant", [{"type": "tool_use", "id": use_id, "name": "exec", "input": {"command": "cat app.log"}}], {}),
                ("user", [{"type": "tool_result", "tool_use_id": use_id,
                           "content": (line * (tool_output_chars // len(line) + 1))[:tool_output_chars]}], {}),
            ]
        blocks.append(("assistant", [{"type": "text", "text": text}], {}))
        for role, content, usage in blocks:
            seq += 1
            messages.append(Message(session=session, seq=seq, role=role, content=content, usage=usage))
    Message.objects.bulk_create(messages)
    session.next_seq = seq + 1
    session.save(update_fields=["next_seq"])


@pytest.mark.parametrize("shape, tool_output_chars, text_chars, turns", [
    ("chat", 0, 5_000, 60),
    ("tools", 20_000, 2_000, 30),
])
def test_cost_of_a_compaction(fake_llm, make_tenant, monkeypatch, shape, tool_output_chars, text_chars, turns):
    """The figures in docs/compaction.md: a session of about 150k-180k tokens compacted with the defaults
    (keep 20000 tokens), the summarizing call made to the fake model from this process. Tool results are cut
    in the summarizing request, so a tool-heavy session costs far less to summarize than its context."""
    from sessions.models import AgentSession
    from sessions.runs.compaction import compaction_plan, context_tokens_estimate, session_compact

    monkeypatch.setenv("ANTHROPIC_BASE_URL", fake_llm)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    bundle = make_tenant()
    session = AgentSession.objects.create(tenant=bundle.tenant, agent=bundle.agent, key=f"agent:assistant:cost-{shape}")
    _conversation(session, turns, tool_output_chars=tool_output_chars, text_chars=text_chars)

    started = time.perf_counter()
    tokens = context_tokens_estimate(session_id=session.pk, system=bundle.agent.system_prompt)
    estimate_ms = (time.perf_counter() - started) * 1000
    started = time.perf_counter()
    plan = compaction_plan(session_id=session.pk, keep_recent_tokens=20_000)
    plan_ms = (time.perf_counter() - started) * 1000
    started = time.perf_counter()
    compaction = session_compact(session=session, trigger=Compaction.Trigger.MANUAL, should_abort=lambda: False)
    total_ms = (time.perf_counter() - started) * 1000

    kept = sum(content_tokens(m.content) for m in Message.objects.filter(session=session, seq__gte=compaction.first_kept_seq))
    assert kept >= 20_000 and compaction.tokens_before == tokens
    if tool_output_chars:
        assert compaction.usage["input_tokens"] < plan.older_tokens / 2
    print(
        f"\n{shape}: {turns} turns, context ~{tokens} tokens (estimate {estimate_ms:.1f} ms by characters, "
        f"cut {plan_ms:.1f} ms); summarized {plan.older_tokens} tokens before #{plan.first_kept_seq}; summarizing "
        f"call {compaction.usage['input_tokens']} input + {compaction.usage['output_tokens']} output tokens, "
        f"{compaction.usage['duration_ms']} ms in the call, {total_ms:.0f} ms in all; context after "
        f"~{compaction.tokens_after} tokens"
    )
