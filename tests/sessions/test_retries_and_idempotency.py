"""Client retries never pile up in the model's context, and Idempotency-Key makes a repeated POST return
the run (or tool invocation) the first one started (docs/gateway.md, "Retries and idempotency")."""

import json
import threading
import uuid

import httpx
import openai
import pytest

from sessions.models import AgentSession, IdempotencyKey, Message, Run
from sessions.runs import RUN_FAILED_UNANSWERED
from tests.conftest import wait_until
from tools.models import ToolInvocation


def chat(live, bundle, body, key=None, **headers):
    if key is not None:
        headers["Idempotency-Key"] = key
    return httpx.post(f"{live}/v1/chat/completions", json=body, headers={**bundle.headers, **headers}, timeout=60)


def test_the_openai_clients_own_retries_leave_the_message_once_in_the_context(live, tenant, fake_requests):
    client = openai.OpenAI(base_url=f"{live}/v1", api_key=tenant.api_key, timeout=60)  # default: 2 retries
    with pytest.raises(openai.APIStatusError):
        client.chat.completions.create(
            model="assistant", user="retrier", messages=[{"role": "user", "content": "first try [[status=400]]"}]
        )
    session = AgentSession.objects.get(tenant=tenant.tenant, key="agent:assistant:retrier")
    runs = list(Run.objects.filter(session=session))
    assert len(runs) == 3 and {r.status for r in runs} == {"failed"}, "the client tried three times"
    failed = list(Message.objects.filter(session=session))
    assert [m.excluded_reason for m in failed] == [RUN_FAILED_UNANSWERED] * 3, "kept in the transcript, marked"

    reply = client.chat.completions.create(
        model="assistant", user="retrier", messages=[{"role": "user", "content": "second message"}]
    )
    assert reply.choices[0].message.content == "Echo: second message"
    sent = next(r["body"] for r in reversed(fake_requests(50)) if "second message" in json.dumps(r["body"]["messages"]))
    assert "first try" not in json.dumps(sent["messages"]), "the model never sees the unanswered attempts"
    history = httpx.get(f"{live}/api/sessions/{session.pk}/messages/", headers=tenant.headers).json()["results"]
    assert [(m["role"], bool(m["excluded_reason"])) for m in history] == [
        ("user", True), ("user", True), ("user", True), ("user", False), ("assistant", False)
    ]


def test_a_repeated_chat_completion_returns_the_same_run_and_adds_nothing(live, tenant):
    body = {"model": "assistant", "user": "idem", "messages": [{"role": "user", "content": "only once"}]}
    key = str(uuid.uuid4())
    first, second = chat(live, tenant, body, key), chat(live, tenant, body, key)
    assert first.status_code == second.status_code == 200
    assert first.json()["id"] == second.json()["id"]
    assert first.headers["X-Run-Id"] == second.headers["X-Run-Id"]
    assert second.json()["choices"][0]["message"]["content"] == "Echo: only once"
    session = AgentSession.objects.get(tenant=tenant.tenant, key="agent:assistant:idem")
    assert [m.role for m in Message.objects.filter(session=session)] == ["user", "assistant"]

    # A stream of the same request replays the run from its event log.
    with httpx.stream("POST", f"{live}/v1/chat/completions", json={**body, "stream": True},
                      headers={**tenant.headers, "Idempotency-Key": "stream-" + key}, timeout=60) as streamed:
        lines = [line for line in streamed.iter_lines() if line.startswith("data: ")]
    again = chat(live, tenant, {**body, "stream": True}, "stream-" + key)
    replayed = [line for line in again.text.splitlines() if line.startswith("data: ")]
    text = lambda data: "".join(  # noqa: E731
        c["choices"][0]["delta"].get("content") or "" for c in (json.loads(d[6:]) for d in data[:-1]) if c["choices"])
    assert text(lines) == text(replayed) == "Echo: only once"
    assert replayed[-1] == "data: [DONE]"
    assert Message.objects.filter(session=session).count() == 4


def test_the_same_key_with_another_body_is_a_409(live, tenant):
    key = "k-" + uuid.uuid4().hex
    body = {"model": "assistant", "messages": [{"role": "user", "content": "a"}]}
    assert chat(live, tenant, body, key).status_code == 200
    conflict = chat(live, tenant, {**body, "messages": [{"role": "user", "content": "b"}]}, key)
    assert conflict.status_code == 409
    assert conflict.json()["error"]["code"] == "idempotency_key_reused" and key in conflict.json()["error"]["message"]
    invalid = chat(live, tenant, body, "has spaces in it")
    assert invalid.status_code == 400 and invalid.json()["error"]["param"] == "Idempotency-Key"


def test_keys_are_per_tenant(live, make_tenant):
    one, two = make_tenant(), make_tenant()
    body = {"model": "assistant", "messages": [{"role": "user", "content": "mine"}]}
    a, b = chat(live, one, body, "shared-key"), chat(live, two, body, "shared-key")
    assert a.status_code == b.status_code == 200 and a.headers["X-Run-Id"] != b.headers["X-Run-Id"]


def test_concurrent_first_attempts_start_one_run(live, tenant):
    body = {"model": "assistant", "user": "race", "messages": [{"role": "user", "content": "race [[delay_ms=20]]"}]}
    key = uuid.uuid4().hex
    results = []
    threads = [threading.Thread(target=lambda: results.append(chat(live, tenant, body, key))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [r.status_code for r in results] == [200] * 4
    assert len({r.headers["X-Run-Id"] for r in results}) == 1
    session = AgentSession.objects.get(tenant=tenant.tenant, key="agent:assistant:race")
    assert Run.objects.filter(session=session).count() == 1


def test_rest_messages_honour_the_key(live, tenant):
    with httpx.Client(base_url=f"{live}/api", headers=tenant.headers, timeout=30) as api:
        session = api.post("/sessions/", json={"agent": "assistant"}).json()["id"]
        key = {"Idempotency-Key": uuid.uuid4().hex}
        first = api.post(f"/sessions/{session}/messages/", json={"content": "hello"}, headers=key)
        second = api.post(f"/sessions/{session}/messages/", json={"content": "hello"}, headers=key)
        assert first.status_code == second.status_code == 202
        assert first.json()["run"]["id"] == second.json()["run"]["id"]
        conflict = api.post(f"/sessions/{session}/messages/", json={"content": "other"}, headers=key)
        assert conflict.status_code == 409 and "Idempotency-Key" in json.dumps(conflict.json())
        bad = api.post(f"/sessions/{session}/messages/", json={"content": "x"}, headers={"Idempotency-Key": "x" * 256})
        assert bad.status_code == 400 and "Idempotency-Key" in json.dumps(bad.json())
        wait_until(lambda: Run.objects.get(pk=first.json()["run"]["id"]).is_terminal, timeout=30, message="the run")
        assert Message.objects.filter(session_id=session, role="user").count() == 1


def test_tools_invoke_honours_the_key(live, tenant):
    body = {"agent": "assistant", "tool": "process", "input": {"action": "list"}}
    key = {"Idempotency-Key": uuid.uuid4().hex}
    with httpx.Client(base_url=f"{live}/api", headers=tenant.headers, timeout=60) as api:
        first = api.post("/tools/invoke", json=body, headers=key)
        second = api.post("/tools/invoke", json=body, headers=key)
        assert first.status_code == second.status_code == 200, (first.text, second.text)
        assert first.json()["invocation"] == second.json()["invocation"]
        assert first.json()["ok"] is True and second.json()["output"] == first.json()["output"]
        assert ToolInvocation.objects.filter(tenant=tenant.tenant).count() == 1
        conflict = api.post("/tools/invoke", json={**body, "input": {"action": "poll"}}, headers=key)
        assert conflict.status_code == 409
    assert IdempotencyKey.objects.filter(tenant=tenant.tenant, endpoint="tools.invoke").count() == 1
