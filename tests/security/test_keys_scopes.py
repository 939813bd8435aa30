"""API key scopes and limits: a key never grants more than its creator, and each scope opens only its part
of the gateway, on REST, the OpenAI-compatible API, the run event stream and the WebSocket alike."""

import httpx
import pytest

from tenants.models import ApiKey
from tenants.services import api_key_create
from tests.sessions.test_websocket import WS


def key_for(tenant, *scopes, rate_limit_per_minute=None) -> dict:
    """Headers of a key issued by the operator with exactly these scopes."""
    issued = api_key_create(tenant=tenant.tenant, scopes=list(scopes), rate_limit_per_minute=rate_limit_per_minute)
    return {"Authorization": f"Bearer {issued.raw_key}"}


@pytest.fixture
def rest(live):
    def client(headers):
        return httpx.Client(base_url=f"{live}/api", headers=headers, timeout=30)

    return client


def test_a_key_cannot_remove_or_raise_its_rate_limit(live, tenant, rest):
    with rest(tenant.headers) as api:
        unlimited = api.post("/keys/", json={"name": "flood", "rate_limit_per_minute": 0})
        assert unlimited.status_code == 400
        assert "only the operator" in unlimited.json()["rate_limit_per_minute"][0].lower()
        higher = api.post("/keys/", json={"rate_limit_per_minute": 100000})
        assert higher.status_code == 400 and "600" in higher.json()["rate_limit_per_minute"][0]
        assert ApiKey.objects.filter(tenant=tenant.tenant).count() == 1, "nothing was issued"

        lower = api.post("/keys/", json={"name": "slow", "rate_limit_per_minute": 5})
        assert lower.status_code == 201 and lower.json()["rate_limit_per_minute"] == 5
    slow = {"Authorization": f"Bearer {lower.json()['api_key']}"}
    # Eleven quick requests span at most two one-minute windows of 5, so the key must be refused at least once.
    statuses = [httpx.get(f"{live}/api/agents/", headers=slow, timeout=10).status_code for _ in range(11)]
    assert 429 in statuses


def test_a_key_inherits_its_creators_limit_and_the_operator_can_lift_it(tenant, rest):
    ApiKey.objects.filter(tenant=tenant.tenant).update(rate_limit_per_minute=20)
    with rest(tenant.headers) as api:
        inherited = api.post("/keys/", json={"name": "child"})
        assert inherited.status_code == 201 and inherited.json()["rate_limit_per_minute"] == 20
        assert api.post("/keys/", json={"rate_limit_per_minute": 21}).status_code == 400
    with rest(key_for(tenant, "admin", rate_limit_per_minute=0)) as operator_unlimited:
        assert operator_unlimited.post("/keys/", json={"rate_limit_per_minute": 0}).status_code == 201
        huge = operator_unlimited.post("/keys/", json={"rate_limit_per_minute": 10**12})
        assert huge.status_code == 400 and "rate_limit_per_minute" in huge.json()


def test_a_key_cannot_grant_scopes_it_lacks(tenant, rest):
    with rest(key_for(tenant, "admin")) as admin_only:
        escalated = admin_only.post("/keys/", json={"scopes": ["admin", "chat"]})
        assert escalated.status_code == 400 and "'chat'" in escalated.json()["scopes"][0]
        inherited = admin_only.post("/keys/", json={"name": "same"})
        assert inherited.status_code == 201 and inherited.json()["scopes"] == ["admin"]
        assert admin_only.post("/keys/", json={"scopes": []}).status_code == 400
        unknown = admin_only.post("/keys/", json={"scopes": ["root"]})
        assert unknown.status_code == 400 and "scopes" in unknown.json()
    with rest(tenant.headers) as full:
        narrow = full.post("/keys/", json={"name": "chat front end", "scopes": ["chat", "read"]})
        assert narrow.status_code == 201 and sorted(narrow.json()["scopes"]) == ["chat", "read"]


def test_a_chat_key_chats_but_cannot_manage_keys_or_agents(tenant, rest):
    with rest(tenant.headers) as full:
        other_key = full.post("/keys/", json={"name": "ops"}).json()
    with rest(key_for(tenant, "chat")) as chat:
        session = chat.post("/sessions/", json={"agent": "assistant"})
        assert session.status_code == 201
        assert chat.post(f"/sessions/{session.json()['id']}/messages/", json={"content": "hi"}).status_code == 202

        revoke = chat.post(f"/keys/{other_key['id']}/revoke/")
        assert revoke.status_code == 403
        assert revoke.json()["code"] == "insufficient_scope" and revoke.json()["required_scope"] == "admin"
        assert "'admin'" in revoke.json()["detail"]
        assert ApiKey.objects.get(pk=other_key["id"]).revoked_at is None
        assert chat.post("/keys/", json={"name": "mine"}).status_code == 403
        assert chat.delete("/agents/assistant/").status_code == 403
        assert chat.patch(f"/sessions/{session.json()['id']}/", json={"queue_mode": "collect"}).status_code == 403
        assert chat.delete(f"/sessions/{session.json()['id']}/").status_code == 403

        listing = chat.get("/agents/")
        assert listing.status_code == 403 and listing.json()["required_scope"] == "read"


def test_a_read_key_sees_everything_and_changes_nothing(tenant, rest):
    with rest(key_for(tenant, "read")) as read:
        assert read.get("/agents/").status_code == 200
        assert read.get("/sessions/").status_code == 200
        assert read.get("/keys/").status_code == 200
        refused = read.post("/sessions/", json={"agent": "assistant"})
        assert refused.status_code == 403 and refused.json()["required_scope"] == "chat"
        assert read.patch("/agents/assistant/", json={"system_prompt": "obey"}).status_code == 403


def test_openai_api_and_event_stream_check_scopes(live, tenant, rest):
    read_only, chat_only = key_for(tenant, "read"), key_for(tenant, "chat")
    refused = httpx.get(f"{live}/v1/models", headers=read_only, timeout=10)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "insufficient_scope" and "'chat'" in refused.json()["error"]["message"]
    completion = httpx.post(
        f"{live}/v1/chat/completions", headers=read_only, timeout=30,
        json={"model": "assistant", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert completion.status_code == 403
    assert httpx.get(f"{live}/v1/models", headers=chat_only, timeout=10).status_code == 200

    with rest(tenant.headers) as full:
        session = full.post("/sessions/", json={"agent": "assistant"}).json()
        run = full.post(f"/sessions/{session['id']}/messages/", json={"content": "hi"}).json()["run"]
    stream = httpx.get(f"{live}/api/runs/{run['id']}/events/", headers=chat_only, timeout=10)
    assert stream.status_code == 403 and "'read'" in stream.json()["detail"]


def test_websocket_methods_check_scopes(live, tenant):
    reader = WS(live, key_for(tenant, "read")["Authorization"].removeprefix("Bearer "))
    try:
        assert reader.welcome["scopes"] == ["read"]
        assert "chat.send" not in reader.welcome["methods"] and "sessions.history" in reader.welcome["methods"]
        assert reader.call("agents.list")["ok"]
        refused = reader.call("chat.send", {"session": "00000000-0000-0000-0000-000000000000", "message": "hi"})
        assert not refused["ok"] and refused["error"]["code"] == "insufficient_scope"
        assert "'chat'" in refused["error"]["message"]
        assert reader.call("health")["ok"], "the socket stays open after a refusal"
    finally:
        reader.close()

    chatter = WS(live, key_for(tenant, "chat", "read")["Authorization"].removeprefix("Bearer "))
    try:
        session = chatter.call("sessions.create", {"agent": "assistant"})
        assert session["ok"], session
        resolve = chatter.call("approvals.resolve", {"approval": "00000000-0000-0000-0000-000000000000", "decision": "allow"})
        assert not resolve["ok"] and resolve["error"]["code"] == "insufficient_scope"
    finally:
        chatter.close()
