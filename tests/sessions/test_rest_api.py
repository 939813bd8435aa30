"""The REST API under /api/, end to end against Daphne and a worker."""

import json

import httpx
import pytest

from sessions.models import AgentSession, Run
from tests.conftest import sse_events, wait_until


@pytest.fixture
def api(live, tenant):
    with httpx.Client(base_url=f"{live}/api", headers=tenant.headers, timeout=30) as client:
        yield client


def wait_for_run(api, run_id: str) -> dict:
    def finished():
        run = api.get(f"/runs/{run_id}/").json()
        return run if run["status"] in ("succeeded", "failed", "aborted") else None

    return wait_until(finished, timeout=30, message=f"run {run_id} to finish")


def test_agents_crud(api):
    created = api.post("/agents/", json={"slug": "writer", "model": "claude-x", "system_prompt": "Write well."})
    assert created.status_code == 201, created.text
    assert created.json()["approval"] == {"mode": "off", "allowlist": []}
    assert [a["slug"] for a in api.get("/agents/").json()["results"]] == ["assistant", "writer"]

    patch = {"tool_policy": {"allow": ["group:web"], "deny": ["exec"]}, "approval": {"mode": "on_miss", "allowlist": ["exec:git *"]}}
    updated = api.patch("/agents/writer/", json=patch)
    assert updated.status_code == 200 and updated.json()["tool_policy"] == patch["tool_policy"]
    assert api.get("/agents/writer/").json()["approval"] == patch["approval"]

    assert api.post("/agents/", json={"slug": "writer"}).status_code == 400
    bad = api.patch("/agents/writer/", json={"approval": {"mode": "sometimes"}})
    assert bad.status_code == 400 and "mode" in json.dumps(bad.json())
    assert api.post("/agents/", json={"slug": "Bad Slug"}).status_code == 400
    assert api.delete("/agents/writer/").status_code == 204
    assert api.get("/agents/writer/").status_code == 404


def test_api_keys_create_and_revoke(live, api):
    created = api.post("/keys/", json={"name": "ci"})
    assert created.status_code == 201
    secret = created.json()["api_key"]
    assert "api_key" not in api.get(f"/keys/{created.json()['id']}/").json(), "the secret is shown once"
    headers = {"Authorization": f"Bearer {secret}"}
    assert httpx.get(f"{live}/api/agents/", headers=headers).status_code == 200
    assert api.post(f"/keys/{created.json()['id']}/revoke/").json()["revoked_at"]
    refused = httpx.get(f"{live}/api/agents/", headers=headers)
    assert refused.status_code == 401 and "revoked" in refused.json()["detail"]


def test_session_lifecycle_messages_and_runs(api):
    session = api.post("/sessions/", json={"agent": "assistant", "key": "rest"})
    assert session.status_code == 201
    session_id = session.json()["id"]
    assert session.json()["key"] == "agent:assistant:rest"
    assert api.post("/sessions/", json={"agent": "assistant", "key": "rest"}).status_code == 409
    assert api.post("/sessions/", json={"agent": "nobody"}).status_code == 400

    accepted = api.post(f"/sessions/{session_id}/messages/", json={"content": "hi rest"})
    assert accepted.status_code == 202
    run = accepted.json()["run"]
    assert run["status"] in ("queued", "running") and run["session"] == session_id
    assert wait_for_run(api, run["id"])["status"] == "succeeded"

    history = api.get(f"/sessions/{session_id}/messages/").json()
    assert history["count"] == 2
    assert [(m["role"], m["text"]) for m in history["results"]] == [("user", "hi rest"), ("assistant", "Echo: hi rest")]
    assert api.get(f"/sessions/{session_id}/messages/", params={"after_seq": 1}).json()["count"] == 1

    listed = api.get("/sessions/", params={"agent": "assistant", "status": "active"}).json()
    assert [s["id"] for s in listed["results"]] == [session_id]
    assert api.get("/sessions/", params={"status": "weird"}).status_code == 400
    assert api.get("/runs/", params={"session": session_id}).json()["count"] == 1

    assert api.patch(f"/sessions/{session_id}/", json={"queue_mode": "collect"}).json()["queue_mode"] == "collect"
    assert api.patch(f"/sessions/{session_id}/", json={"queue_mode": "bogus"}).status_code == 400

    reset = api.post(f"/sessions/{session_id}/reset/")
    assert reset.status_code == 200
    assert api.get(f"/sessions/{session_id}/messages/").json()["count"] == 0
    archived = AgentSession.objects.get(pk=reset.json()["archived_session"])
    assert archived.status == "closed" and archived.messages.count() == 2, "reset loses nothing"

    assert api.delete(f"/sessions/{session_id}/").status_code == 204
    assert api.get(f"/sessions/{session_id}/").status_code == 404


@pytest.mark.parametrize(
    "body, field",
    [({}, "content"), ({"content": ""}, "content"), ({"content": 5}, "content"), ({"content": [{"type": "video"}]}, "content"),
     ({"content": "x", "mode": "loud"}, "mode")],
)
def test_bad_messages_are_400_naming_the_field(api, body, field):
    session_id = api.post("/sessions/", json={"agent": "assistant"}).json()["id"]
    response = api.post(f"/sessions/{session_id}/messages/", json=body)
    assert response.status_code == 400 and field in response.json()


def test_run_abort_over_rest(api):
    session_id = api.post("/sessions/", json={"agent": "assistant"}).json()["id"]
    run_id = api.post(f"/sessions/{session_id}/messages/", json={"content": "a b c d e f g h i [[delay_ms=200]]"}).json()["run"]["id"]
    wait_until(lambda: Run.objects.get(pk=run_id).messages.exists(), timeout=10, message="the run to start")
    assert api.post(f"/runs/{run_id}/abort/").status_code == 200
    assert wait_for_run(api, run_id)["status"] == "aborted"


def read_sse(client: httpx.Client, url: str, headers: dict | None = None) -> list[dict]:
    with client.stream("GET", url, headers=headers or {}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return list(sse_events(response.iter_lines()))


def test_sse_tails_a_live_run_replays_a_finished_one_and_resumes(api):
    session_id = api.post("/sessions/", json={"agent": "assistant"}).json()["id"]
    run_id = api.post(f"/sessions/{session_id}/messages/", json={"content": "one two three [[delay_ms=30]]"}).json()["run"]["id"]
    live_events = read_sse(api, f"/runs/{run_id}/events/")
    assert [e["id"] for e in live_events] == list(range(1, len(live_events) + 1))
    assert live_events[-1]["event"] == "run.completed"
    assert "".join(e["data"]["text"] for e in live_events if e["event"] == "text.delta") == "Echo: one two three"

    assert read_sse(api, f"/runs/{run_id}/events/") == live_events, "a finished run replays"
    resumed = read_sse(api, f"/runs/{run_id}/events/", headers={"Last-Event-ID": "3"})
    assert resumed == live_events[3:]
    assert api.get(f"/runs/{run_id}/events/", headers={"Last-Event-ID": "x"}).status_code == 400


def test_openapi_schema_and_docs(live):
    schema = httpx.get(f"{live}/api/schema/", params={"format": "json"}, timeout=10)
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    for path in ("/api/agents/", "/api/sessions/{id}/messages/", "/api/runs/{id}/abort/", "/api/runs/{id}/events/", "/api/keys/"):
        assert path in paths
    docs = httpx.get(f"{live}/api/docs/", timeout=10)
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    asset = next(part.split('"')[0] for part in docs.text.split('src="')[1:] if "swagger-ui" in part)
    assert httpx.get(f"{live}{asset}", timeout=10).status_code == 200, "docs work offline"


def test_rest_without_key_is_401(live):
    response = httpx.get(f"{live}/api/sessions/", timeout=10)
    assert response.status_code == 401
    assert response.json()["detail"]
