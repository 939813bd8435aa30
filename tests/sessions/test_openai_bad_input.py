"""Bad input never gets a 500: each case answers with the right status and an OpenAI-shaped error."""

import json

import httpx
import pytest

from tenants.models import Tenant
from tenants.services import api_key_create, api_key_revoke


def post(live, headers, body, **kwargs):
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(
        f"{live}/v1/chat/completions", content=content,
        headers={"Content-Type": "application/json", **headers}, timeout=30, **kwargs,
    )


def assert_openai_error(response, status: int, *, mentions: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "code"}
    if mentions:
        assert mentions in error["message"], error["message"]
    return error


VALID = {"model": "assistant", "messages": [{"role": "user", "content": "hi"}]}


def test_missing_and_invalid_keys_are_401(live, tenant):
    assert_openai_error(post(live, {}, VALID), 401, mentions="Missing API key")
    assert_openai_error(post(live, {"Authorization": "Bearer bc_nope_nope"}, VALID), 401, mentions="Invalid API key")
    assert_openai_error(post(live, {"Authorization": "Basic abc"}, VALID), 401)
    assert httpx.get(f"{live}/v1/models", timeout=10).status_code == 401


def test_revoked_key_is_401_and_suspended_tenant_is_403(live, tenant):
    issued = api_key_create(tenant=tenant.tenant)
    api_key_revoke(api_key=issued.api_key)
    error = assert_openai_error(post(live, {"Authorization": f"Bearer {issued.raw_key}"}, VALID), 401, mentions="revoked")
    assert error["code"] == "revoked_api_key"

    Tenant.objects.filter(pk=tenant.tenant.pk).update(status=Tenant.Status.SUSPENDED)
    assert_openai_error(post(live, tenant.headers, VALID), 403, mentions="suspended")


def test_unknown_model_and_other_tenants_agent_are_404(live, make_tenant):
    mine, other = make_tenant(), make_tenant()
    other.agent.slug = "secret-agent"
    other.agent.save()
    for model in ("no-such-agent", "secret-agent"):
        error = assert_openai_error(post(live, mine.headers, {**VALID, "model": model}), 404, mentions=model)
        assert error["code"] == "model_not_found"
    assert httpx.get(f"{live}/v1/models/secret-agent", headers=mine.headers, timeout=10).status_code == 404


@pytest.mark.parametrize(
    "body, mentions",
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        ([1, 2], "JSON object"),
        ({"model": "assistant"}, "messages"),
        ({"model": "assistant", "messages": []}, "messages"),
        ({"model": "assistant", "messages": "hi"}, "messages"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "model"),
        ({"model": 7, "messages": [{"role": "user", "content": "hi"}]}, "model"),
        ({**VALID, "stream": "yes"}, "stream"),
        ({"model": "assistant", "messages": ["hi"]}, "messages[0]"),
        ({"model": "assistant", "messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
        ({"model": "assistant", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"model": "assistant", "messages": [{"role": "user", "content": [{"type": "audio"}]}]}, "messages[0].content[0]"),
        ({"model": "assistant", "messages": [{"role": "assistant", "content": "hi"}]}, "role 'user'"),
        ({"model": "assistant", "messages": [{"role": "user", "content": ""}]}, "no content"),
        ({**VALID, "max_tokens": 0}, "max_tokens"),
        ({**VALID, "max_tokens": "many"}, "max_tokens"),
        ({**VALID, "temperature": 9}, "temperature"),
        ({**VALID, "user": 42}, "user"),
        ({**VALID, "user": "agent:someone-else:x"}, "agent:assistant:"),
    ],
)
def test_malformed_requests_are_400_naming_the_field(live, tenant, body, mentions):
    assert_openai_error(post(live, tenant.headers, body), 400, mentions=mentions)


def test_body_over_the_message_limit_is_413(live, tenant):
    huge = {"model": "assistant", "messages": [{"role": "user", "content": "x" * (20 * 1024 * 1024 + 10)}]}
    assert_openai_error(post(live, tenant.headers, huge), 413, mentions="20 MiB")


@pytest.mark.parametrize(
    "method, path, allowed",
    [("GET", "/v1/chat/completions", "POST"), ("PUT", "/v1/chat/completions", "POST"),
     ("POST", "/v1/models", "GET"), ("DELETE", "/v1/models/assistant", "GET")],
)
def test_wrong_method_is_405_in_openai_shape_with_allow(live, tenant, method, path, allowed):
    response = httpx.request(method, f"{live}{path}", headers=tenant.headers, timeout=10)
    error = assert_openai_error(response, 405, mentions=method)
    assert error["code"] == "method_not_allowed" and allowed in error["message"]
    assert response.headers["Allow"] == allowed


@pytest.mark.parametrize(
    "method, path",
    [("POST", "/v1/embeddings"), ("GET", "/v1/files"), ("POST", "/v1/completions"), ("GET", "/v1"),
     ("GET", "/v1/"), ("GET", "/v1/chat/completions/extra"), ("POST", "/v1/audio/speech")],
)
def test_unknown_v1_paths_are_404_in_openai_shape(live, tenant, method, path):
    response = httpx.request(method, f"{live}{path}", headers=tenant.headers, json={}, timeout=10)
    error = assert_openai_error(response, 404, mentions=f"{method} {path}")
    assert error["code"] == "unknown_url" and "/v1/chat/completions" in error["message"]
    assert response.headers["Content-Type"] == "application/json"


def test_nul_characters_are_400_not_500(live, tenant):
    assert_openai_error(post(live, tenant.headers, {**VALID, "user": "a\x00b"}), 400, mentions="NUL")
    response = httpx.get(f"{live}/api/sessions/", params={"key": "a\x00b"}, headers=tenant.headers, timeout=10)
    assert response.status_code == 400 and "NUL" in response.json()["detail"]
