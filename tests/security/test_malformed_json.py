"""Malformed JSON bodies: absurd nesting and wrongly typed fields are the client's mistake (400 with a
message saying what is wrong), never a 500, and the gateway keeps answering afterwards."""

import httpx
import pytest

DEEP_ARRAY = "[" * 10_000 + "]" * 10_000
DEEP_OBJECT = '{"a":' * 10_000 + "1" + "}" * 10_000
# The NUL check parses the body too, to name the field that carries the NUL.
DEEP_WITH_NUL = "[" * 10_000 + '"\\u0000"' + "]" * 10_000
# Deep inside an otherwise well-formed request.
DEEP_IN_A_FIELD = '{"model": "assistant", "messages": [{"role": "user", "content": ' + DEEP_ARRAY + "}]}"
# Just over the limit: it parses in Python, but every recursive walk after it would be at risk.
JUST_TOO_DEEP = "[" * 101 + "]" * 101


def assert_still_answering(live, tenant):
    assert httpx.get(f"{live}/v1/models", headers=tenant.headers, timeout=10).status_code == 200
    assert httpx.get(f"{live}/api/agents/", headers=tenant.headers, timeout=10).status_code == 200


@pytest.fixture
def endpoints(live, tenant):
    session = httpx.post(f"{live}/api/sessions/", json={"agent": "assistant"}, headers=tenant.headers, timeout=10)
    assert session.status_code == 201, session.text
    session_id = session.json()["id"]
    return [
        ("POST", "/v1/chat/completions"),
        ("POST", "/api/agents/"),
        ("PATCH", "/api/agents/assistant/"),
        ("POST", "/api/keys/"),
        ("POST", "/api/sessions/"),
        ("PATCH", f"/api/sessions/{session_id}/"),
        ("POST", f"/api/sessions/{session_id}/messages/"),
        ("POST", "/api/cron/jobs/"),
        ("POST", "/api/tools/invoke"),
    ]


@pytest.mark.parametrize(
    "body, mentions",
    [
        (DEEP_ARRAY, "nested deeper than 100 levels"),
        (DEEP_OBJECT, "nested deeper than 100 levels"),
        (DEEP_WITH_NUL, "NUL character"),
        (DEEP_IN_A_FIELD, "nested deeper than 100 levels"),
        (JUST_TOO_DEEP, "nested deeper than 100 levels"),
    ],
)
def test_deeply_nested_json_is_400_everywhere(live, tenant, endpoints, body, mentions):
    for method, path in endpoints:
        response = httpx.request(
            method, f"{live}{path}", content=body, timeout=30,
            headers={**tenant.headers, "Content-Type": "application/json"},
        )
        assert response.status_code == 400, (method, path, response.status_code, response.text[:300])
        assert mentions in response.text, (method, path, response.text[:300])
    assert_still_answering(live, tenant)


def test_openai_errors_name_the_nesting_limit(live, tenant):
    response = httpx.post(
        f"{live}/v1/chat/completions", content=DEEP_ARRAY, timeout=30,
        headers={**tenant.headers, "Content-Type": "application/json"},
    )
    error = response.json()["error"]
    assert response.status_code == 400 and error["code"] == "json_too_deep", response.text


def test_nesting_within_the_limit_is_judged_on_its_content(live, tenant):
    """100 levels is not refused for depth: the request fails (or not) for what it says."""
    content = "[" * 97 + "]" * 97
    body = '{"model": "assistant", "messages": [{"role": "user", "content": ' + content + "}]}"
    response = httpx.post(
        f"{live}/v1/chat/completions", content=body, timeout=30,
        headers={**tenant.headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 400 and "nested deeper" not in response.text, response.text
    assert "messages[0].content" in response.json()["error"]["message"]


@pytest.mark.parametrize("role", [["user"], {"user": True}, [], {}])
def test_role_of_the_wrong_type_is_400_naming_it(live, tenant, role):
    body = {"model": "assistant", "messages": [{"role": role, "content": "hi"}]}
    response = httpx.post(f"{live}/v1/chat/completions", json=body, headers=tenant.headers, timeout=30)
    assert response.status_code == 400, response.text
    assert "messages[0].role" in response.json()["error"]["message"]
    assert_still_answering(live, tenant)
