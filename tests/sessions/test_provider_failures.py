"""Provider failures surface as clear errors, and the run records why it failed."""

import json
import uuid

import httpx
import openai
import pytest

from sessions.models import Run


def chat(live, bundle, text, **body):
    return httpx.post(
        f"{live}/v1/chat/completions", headers=bundle.headers, timeout=30,
        json={"model": "assistant", "messages": [{"role": "user", "content": text}], **body},
    )


def stream_lines(live, bundle, text) -> list[str]:
    with httpx.stream(
        "POST", f"{live}/v1/chat/completions", headers=bundle.headers, timeout=30,
        json={"model": "assistant", "stream": True, "messages": [{"role": "user", "content": text}]},
    ) as response:
        assert response.status_code == 200
        return [line for line in response.iter_lines() if line and not line.startswith(":")]


def last_run(bundle) -> Run:
    return Run.objects.filter(tenant=bundle.tenant).latest("created_at")


def test_overload_is_retried_before_output_then_succeeds(live, tenant, fake_requests):
    response = chat(live, tenant, "hello [[fail_first=ov-1:2]]")
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "Echo: hello"
    assert sum("fail_first=ov-1:2" in json.dumps(r["body"]) for r in fake_requests(10)) == 3


def test_persistent_overload_fails_with_a_clear_503(live, tenant):
    response = chat(live, tenant, "hello [[status=529]]")
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "overloaded" and "overloaded" in error["message"].lower()
    run = last_run(tenant)
    assert run.status == Run.Status.FAILED and run.error_code == "overloaded"
    assert "overloaded" in run.error.lower()


@pytest.mark.parametrize(
    "directive, code, hint",
    [("[[status=401]]", "auth", "ANTHROPIC_API_KEY"), ("[[status=400]]", "bad_request", "refused")],
)
def test_non_retryable_errors_fail_at_once(live, tenant, fake_requests, directive, code, hint):
    response = chat(live, tenant, f"hello {directive}")
    assert response.status_code == 502
    assert response.json()["error"]["code"] == code
    assert hint in response.json()["error"]["message"]
    assert sum(directive in json.dumps(r["body"]) for r in fake_requests(10)) == 1, "no retry for a permanent error"


def test_unknown_model_says_how_to_fix_it(live, make_tenant):
    bundle = make_tenant(model="claude-unknown-1")
    response = chat(live, bundle, "hello")
    assert response.status_code == 502
    assert "claude-unknown-1" in response.json()["error"]["message"]
    assert "agent's model" in response.json()["error"]["message"]


def test_fallback_model_answers_when_the_primary_is_missing(live, make_tenant, fake_requests):
    # Names of this test's own, since the fake model also serves whatever else is still running.
    primary, backup = f"claude-unknown-{uuid.uuid4().hex[:6]}", f"claude-backup-{uuid.uuid4().hex[:6]}"
    bundle = make_tenant(model=primary, fallbacks=[backup])
    response = chat(live, bundle, "hello")
    assert response.status_code == 200, response.text
    asked = [r["body"]["model"] for r in fake_requests(50) if r["body"]["model"] in (primary, backup)]
    assert asked == [primary, backup]


def test_midstream_error_ends_the_stream_cleanly_and_fails_the_run(live, tenant):
    lines = stream_lines(live, tenant, "one two three [[midstream_error=overloaded_error:2]]")
    payloads = [json.loads(line[6:]) for line in lines[:-1]]
    text = "".join(p["choices"][0]["delta"].get("content", "") for p in payloads if "choices" in p)
    assert text == "Echo: one ", "what was streamed before the error is delivered"
    assert "error" in payloads[-1] and "broke off" in payloads[-1]["error"]["message"]
    assert lines[-1] == "data: [DONE]"
    run = last_run(tenant)
    assert run.status == Run.Status.FAILED and "broke off" in run.error
    # No retry after output: a second attempt would have repeated the streamed text.
    assert run.messages.filter(role="assistant").count() == 0


def test_openai_client_raises_on_a_failed_stream(live, tenant):
    client = openai.OpenAI(base_url=f"{live}/v1", api_key=tenant.api_key, max_retries=0)
    stream = client.chat.completions.create(
        model="assistant", stream=True, messages=[{"role": "user", "content": "x [[status=529]]"}]
    )
    with pytest.raises(openai.APIError, match="overloaded"):
        list(stream)
