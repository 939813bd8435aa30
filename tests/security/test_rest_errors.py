"""Every REST error under /api/ has one shape: {"detail", "code"} plus field errors as lists, and says what is
wrong in the API's words, never a model class; a 429 is "429 Too Many Requests" and says when to retry once."""

import uuid

import httpx
import pytest

from tenants.models import ApiKey


@pytest.fixture
def api(live, tenant):
    with httpx.Client(base_url=f"{live}/api", headers=tenant.headers, timeout=30) as client:
        yield client


def assert_error_shape(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert isinstance(body["detail"], str) and body["detail"], body
    assert body["code"] == code, body
    return body


def test_not_found_names_the_thing_not_the_model_class(api, make_tenant):
    other = make_tenant()
    with httpx.Client(base_url=str(api.base_url), headers=other.headers, timeout=30) as stranger_api:
        theirs = stranger_api.post("/sessions/", json={"agent": "assistant"}).json()["id"]

    session = assert_error_shape(api.get(f"/sessions/{theirs}/"), 404, "not_found")
    assert session["detail"] == "Session not found."
    assert "AgentSession" not in api.get(f"/sessions/{uuid.uuid4()}/messages/").text
    assert api.get("/sessions/not-a-uuid/").json()["detail"] == "Session not found."
    assert assert_error_shape(api.get(f"/runs/{uuid.uuid4()}/"), 404, "not_found")["detail"] == "Run not found."
    assert api.get("/agents/nope/").json()["detail"] == "Agent not found."
    assert api.get("/keys/999999999/").json()["detail"] == "API key not found."
    assert api.post(f"/approvals/{uuid.uuid4()}/approve/", json={}).json()["detail"] == "Approval not found."
    assert api.get(f"/cron/jobs/{uuid.uuid4()}/").json()["detail"] == "Cron job not found."


def test_field_errors_are_lists_with_a_summary(api):
    body = assert_error_shape(api.post("/sessions/", json={"agent": "nope"}), 400, "invalid")
    assert body["agent"] == ["You have no agent 'nope'."]
    assert body["detail"] == "agent: You have no agent 'nope'."

    missing = assert_error_shape(api.post("/sessions/", json={}), 400, "invalid")
    assert isinstance(missing["agent"], list) and "agent:" in missing["detail"]

    slug = assert_error_shape(api.post("/agents/", json={"slug": "Bad Slug"}), 400, "invalid")
    assert isinstance(slug["slug"], list) and all(isinstance(message, str) for message in slug["slug"])


def test_auth_conflict_and_method_errors_share_the_shape(live, api):
    assert_error_shape(httpx.get(f"{live}/api/agents/", timeout=10), 401, "not_authenticated")
    bad_key = httpx.get(f"{live}/api/agents/", headers={"Authorization": "Bearer bc_nope_nope"}, timeout=10)
    assert_error_shape(bad_key, 401, "invalid_api_key")
    assert_error_shape(api.put("/keys/"), 405, "method_not_allowed")

    assert api.post("/sessions/", json={"agent": "assistant", "key": "twice"}).status_code == 201
    again = assert_error_shape(api.post("/sessions/", json={"agent": "assistant", "key": "twice"}), 409, "conflict")
    assert "already exists" in again["detail"]


def test_429_has_its_reason_phrase_and_says_it_once(live, tenant):
    ApiKey.objects.filter(tenant=tenant.tenant).update(rate_limit_per_minute=1)
    responses = [httpx.get(f"{live}/api/agents/", headers=tenant.headers, timeout=10) for _ in range(3)]
    limited = next(r for r in responses if r.status_code == 429)
    assert limited.reason_phrase == "Too Many Requests"
    body = assert_error_shape(limited, 429, "rate_limited")
    assert body["retry_after"] == int(limited.headers["Retry-After"])
    assert body["detail"].count("retry") + body["detail"].count("Expected available") == 1, body["detail"]


def test_unknown_api_urls_answer_the_json_404(live, api):
    unknown = assert_error_shape(api.get("/nope/"), 404, "not_found")
    assert "/api/nope/" in unknown["detail"]
    missing_slash = assert_error_shape(api.post("/sessions", json={"agent": "assistant"}), 404, "not_found")
    assert "/api/sessions/" in missing_slash["detail"]
    redirected = api.get("/agents", follow_redirects=True)
    assert redirected.status_code == 200 and redirected.url.path == "/api/agents/"
    assert "{path}" not in str(httpx.get(f"{live}/api/schema/", params={"format": "json"}, timeout=10).json()["paths"])
