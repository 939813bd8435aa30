"""Fallback chains across providers: tried in order when a model is unavailable, only before any reply text
was streamed, each entry reached as `Agent.fallbacks` says (docs/providers.md)."""

import uuid

import httpx

from tests.conftest import wait_until
from tests.providers.test_openai_provider import ask, sent_with
from tests.sessions.test_rest_api import wait_for_run


def test_an_anthropic_agent_falls_back_to_an_openai_compatible_model(live, make_tenant, fake_requests, openai_requests):
    bundle = make_tenant(model="claude-unknown-primary", fallbacks=[{"provider": "openai", "model": "fake-model"}])
    finished = ask(live, bundle, "cross provider one")
    assert finished["status"] == "succeeded", finished
    assert [r["body"]["model"] for r in sent_with(fake_requests, "cross provider one")] == ["claude-unknown-primary"]
    [sent] = sent_with(openai_requests, "cross provider one")
    assert sent["body"]["model"] == "fake-model"
    assert sent["headers"]["authorization"] == "Bearer test-openai-key", "the deployment's key for that provider"


def test_an_openai_agent_falls_back_to_anthropic(live, make_tenant, fake_requests):
    bundle = make_tenant(provider="openai", model="unknown-local", fallbacks=[{"provider": "anthropic", "model": "claude-backup"}])
    finished = ask(live, bundle, "back to claude")
    assert finished["status"] == "succeeded", finished
    assert [r["body"]["model"] for r in sent_with(fake_requests, "back to claude")] == ["claude-backup"]


def test_the_agents_endpoint_and_key_apply_to_its_own_provider_only(live, make_tenant, fake_openai, openai_requests):
    bundle = make_tenant(
        provider="openai", model="unknown-a", base_url=f"{fake_openai}/v1", api_key="tenant-key",
        fallbacks=["unknown-b", {"provider": "openai", "model": "fake-model"}],
    )
    finished = ask(live, bundle, "whose key")
    assert finished["status"] == "succeeded", finished
    tried = [(r["body"]["model"], r["headers"]["authorization"]) for r in sent_with(openai_requests, "whose key")]
    assert tried == [
        ("unknown-a", "Bearer tenant-key"),
        ("unknown-b", "Bearer tenant-key"),  # a model id: the agent's provider, as the agent reaches it
        ("fake-model", "Bearer test-openai-key"),  # an object entry: the provider as the deployment configures it
    ]


def test_when_every_model_fails_the_error_lists_what_was_tried(live, make_tenant):
    bundle = make_tenant(model="claude-unknown-a", fallbacks=[{"provider": "openai", "model": "unknown-b"}, "claude-unknown-c"])
    finished = ask(live, bundle, "nobody home")
    assert finished["status"] == "failed" and finished["error_code"] == "not_found"
    assert "tried models: anthropic:claude-unknown-a, openai:unknown-b, anthropic:claude-unknown-c" in finished["error"]


def test_a_permanent_error_does_not_fall_back(live, make_tenant, openai_requests):
    bundle = make_tenant(fallbacks=[{"provider": "openai", "model": "fake-model"}])
    finished = ask(live, bundle, "bad key [[status=401]]")
    assert finished["status"] == "failed" and finished["error_code"] == "auth"
    assert not sent_with(openai_requests, "bad key"), "a configuration error is fixed, not worked around"


def test_no_fallback_once_the_reply_has_started(live, make_tenant, openai_requests):
    bundle = make_tenant(fallbacks=[{"provider": "openai", "model": "fake-model"}])
    # A marker of its own: the fake keeps the requests of every earlier test of this process, and other tests
    # send midstream errors to it on purpose.
    marker = f"no-fallback-{uuid.uuid4().hex[:6]}"
    finished = ask(live, bundle, f"{marker} one two three [[midstream_error=overloaded_error:2]]")
    assert finished["status"] == "failed" and "broke off after it had started streaming" in finished["error"]
    assert not sent_with(openai_requests, marker)


def test_an_abort_during_the_retry_backoff_ends_the_run(live, make_tenant, fake_requests, openai_requests):
    bundle = make_tenant(fallbacks=[{"provider": "openai", "model": "fake-model"}])
    marker = f"abort-backoff-{uuid.uuid4().hex[:6]}"
    with httpx.Client(base_url=f"{live}/api", headers=bundle.headers, timeout=30) as api:
        session_id = api.post("/sessions/", json={"agent": "assistant"}).json()["id"]
        run = api.post(f"/sessions/{session_id}/messages/", json={"content": f"{marker} [[status=529]]"}).json()["run"]
        wait_until(lambda: sent_with(fake_requests, marker), timeout=30, message="the first attempt")
        assert api.post(f"/runs/{run['id']}/abort/").status_code in (200, 202)
        finished = wait_for_run(api, run["id"])
    assert finished["status"] == "aborted", finished
    assert len(sent_with(fake_requests, marker)) < 4, "the retries stopped"
    assert not sent_with(openai_requests, marker), "and no fallback was tried"
