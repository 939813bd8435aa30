"""Tenant isolation: tenant B's key against tenant A's objects, on every REST endpoint in the OpenAPI
schema, every WebSocket method that takes an id, and the OpenAI endpoints. Always 404, never data."""

import json
import re
import uuid

import httpx
import pytest

from channels_app.models import ChannelAccount
from sessions.models import AgentSession, Message, Run
from tests.conftest import wait_until
from tests.sessions.test_websocket import WS


@pytest.fixture
def owner(live, make_tenant):
    """Tenant A with one of each object, made through its own API."""
    bundle = make_tenant()
    slug = f"secret-{uuid.uuid4().hex[:8]}"
    api = httpx.Client(base_url=f"{live}/api", headers=bundle.headers, timeout=30)
    assert api.post("/agents/", json={"slug": slug, "system_prompt": "A's secrets"}).status_code == 201
    session = api.post("/sessions/", json={"agent": slug, "key": "private"}).json()
    run = api.post(f"/sessions/{session['id']}/messages/", json={"content": "A's private words"}).json()["run"]
    wait_until(lambda: Run.objects.get(pk=run["id"]).status == "succeeded", timeout=30, message="A's run")
    key = api.post("/keys/", json={"name": "a-key"}).json()
    job = api.post(
        "/cron/jobs/",
        json={"name": "a-job", "agent": slug, "prompt": "A's schedule", "schedule": {"kind": "every", "every": "1h"}},
    )
    assert job.status_code == 201, job.text
    assert api.patch(f"/agents/{slug}/", json={"approval": {"mode": "always", "allowlist": []}}).status_code == 200
    pending = api.post("/tools/invoke", json={"agent": slug, "tool": "exec", "input": {"command": "echo A"}})
    assert pending.status_code == 202, pending.text
    channel = api.post("/channels/", json={"kind": "discord", "name": "a-bot", "agent": slug, "token": "a-secret-token",
                                           "enabled": False})
    assert channel.status_code == 201, channel.text
    binding = api.post(f"/channels/{channel.json()['id']}/bindings/", json={"match": {"peer_id": "1"}, "agent": slug})
    assert binding.status_code == 201, binding.text
    skill = api.post("/skills/", json={"skill_md": "---\nname: a-skill\ndescription: A's procedure.\n---\nA's steps\n"})
    assert skill.status_code == 201, skill.text
    objects = {
        "agent": slug, "session": session["id"], "run": run["id"], "key": key["id"], "cron_job": job.json()["id"],
        "approval": pending.json()["id"], "invocation": pending.json()["invocation"], "channel": channel.json()["id"],
        "binding": binding.json()["id"], "skill": skill.json()["id"], "response": f"resp_{uuid.UUID(run['id']).hex}",
    }
    yield bundle, objects
    api.close()


# Which of A's objects fill a path's parameters, in order, by the collection the path belongs to.
PATH_OBJECTS = {
    "agents": ["agent"], "sessions": ["session"], "runs": ["run"], "keys": ["key"], "cron": ["cron_job"],
    "approvals": ["approval"], "tools": ["invocation"], "channels": ["channel", "binding"], "skills": ["skill"],
    "models": ["agent"], "responses": ["response"],
}


def _concrete(path: str, objects: dict) -> str | None:
    collection = path.split("/")[2]
    if collection not in PATH_OBJECTS:
        pytest.fail(f"tests/test_isolation.py does not know which object goes into {path}: add it to PATH_OBJECTS")
    for name in PATH_OBJECTS[collection]:
        path = re.sub(r"\{[^}]+\}", str(objects[name]), path, count=1)
    return path


def test_rest_endpoints_never_show_another_tenants_objects(live, owner, tenant):
    _, objects = owner
    schema = httpx.get(f"{live}/api/schema/", params={"format": "json"}, timeout=10).json()
    intruder = httpx.Client(base_url=live, headers=tenant.headers, timeout=30)
    checked = 0
    for path, operations in schema["paths"].items():
        for method in operations:
            if method not in ("get", "post", "put", "patch", "delete"):
                continue
            if "{" not in path:
                if method == "get":
                    listing = intruder.get(path)
                    assert listing.status_code == 200, (path, listing.text)
                    results = listing.json().get("results", [])
                    shown = {str(item.get(field)) for item in results for field in ("id", "slug")}
                    assert not shown & {str(v) for v in objects.values()}, f"{path} lists tenant A's objects"
                    assert objects["session"] not in listing.text and objects["run"] not in listing.text
                continue
            url = _concrete(path, objects)
            response = intruder.request(method.upper(), url, json={})
            assert response.status_code == 404, f"{method.upper()} {url} -> {response.status_code} {response.text[:200]}"
            checked += 1
    assert checked >= 12
    # And nothing of A's changed.
    session = AgentSession.objects.get(pk=objects["session"])
    assert session.status == "active" and session.messages.count() == 2
    assert Run.objects.get(pk=objects["run"]).status == "succeeded"
    assert ChannelAccount.objects.get(pk=objects["channel"]).bindings.count() == 1


def test_openai_endpoints_never_reach_another_tenants_agent_or_session(live, owner, tenant):
    bundle, objects = owner
    intruder = httpx.Client(base_url=live, headers=tenant.headers, timeout=30)
    assert intruder.get(f"/v1/models/{objects['agent']}").status_code == 404
    assert objects["agent"] not in intruder.get("/v1/models").text
    body = {"model": objects["agent"], "messages": [{"role": "user", "content": "let me in"}]}
    assert intruder.post("/v1/chat/completions", json=body).status_code == 404
    # The same session key under B's own agent is B's own session, never A's.
    own = intruder.post(
        "/v1/chat/completions",
        headers={"X-Session-Key": "private"},
        json={"model": "assistant", "messages": [{"role": "user", "content": "mine"}]},
    )
    assert own.status_code == 200 and "A's private words" not in own.text
    assert Message.objects.filter(session_id=objects["session"]).count() == 2


def test_websocket_methods_never_reach_another_tenants_objects(live, owner, tenant):
    _, objects = owner
    client = WS(live, tenant.api_key)
    try:
        for method, params in [
            ("sessions.history", {"session": objects["session"]}),
            ("sessions.reset", {"session": objects["session"]}),
            ("sessions.subscribe", {"session": objects["session"]}),
            ("chat.send", {"session": objects["session"], "message": "hi"}),
            ("chat.abort", {"session": objects["session"]}),
            ("chat.abort", {"run_id": objects["run"]}),
            ("sessions.create", {"agent": objects["agent"]}),
        ]:
            reply = client.call(method, params)
            assert reply["ok"] is False and reply["error"]["code"] == "not_found", (method, reply)
        listing = json.dumps([client.call("sessions.list"), client.call("agents.list")])
        assert objects["session"] not in listing and objects["agent"] not in listing
    finally:
        client.close()
