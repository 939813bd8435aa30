"""Providers are plug-ins: an agent runs on a provider registered from BEAMCLAW_PLUGINS without
the run engine knowing it, and an agent on a provider nobody registered fails its run saying which exist."""

import os
import subprocess
import sys

import httpx

from sessions.models import AgentSession, Run
from tests.conftest import openai_client
from tests.fakes.echo_provider import halves
from tests.sessions.test_rest_api import wait_for_run

PLUGINS = ["tests.fakes.echo_provider"]


def test_an_agent_runs_on_a_plugged_in_provider(gateway, plugin_worker, make_tenant, fake_requests):
    bundle = make_tenant(provider="echo")
    stream = openai_client(gateway, bundle).chat.completions.create(
        model="assistant", messages=[{"role": "user", "content": "plugged in provider"}], stream=True
    )
    chunks = [c for c in stream if c.choices]
    assert [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content] == list(halves("plugged in provider"))
    assert chunks[-1].choices[0].finish_reason == "stop", "end_turn is the canonical stop reason"

    session = AgentSession.objects.get(tenant=bundle.tenant)
    assert Run.objects.get(session=session).status == Run.Status.SUCCEEDED
    assert session.messages.get(role="assistant").content == [{"type": "text", "text": "plugged in provider"}]
    assert not [r for r in fake_requests(200) if "plugged in provider" in str((r["body"] or {}).get("messages"))]


def test_an_agent_on_an_unknown_provider_fails_naming_the_supported_ones(gateway, plugin_worker, make_tenant):
    bundle = make_tenant(provider="nowhere")
    with httpx.Client(base_url=f"{gateway}/api", headers=bundle.headers, timeout=30) as api:
        session_id = api.post("/sessions/", json={"agent": "assistant"}).json()["id"]
        run = api.post(f"/sessions/{session_id}/messages/", json={"content": "anyone there?"}).json()["run"]
        finished = wait_for_run(api, run["id"])
    assert finished["status"] == "failed" and finished["error_code"] == "bad_request"
    assert "Unknown provider 'nowhere'. Supported: anthropic, echo, openai." in finished["error"]
    assert "BEAMCLAW_PLUGINS" in finished["error"]


def test_a_plugin_that_cannot_be_imported_stops_start_up_naming_it(tmp_path):
    """A typo in BEAMCLAW_PLUGINS is found when the process starts, not run by run."""
    check = subprocess.run(
        [sys.executable, "manage.py", "check"], env={**os.environ, "BEAMCLAW_PLUGINS": "tests.fakes.no_such_plugin"},
        capture_output=True, text=True, timeout=120,
    )
    assert check.returncode != 0
    assert "BEAMCLAW_PLUGINS names 'tests.fakes.no_such_plugin', which could not be imported" in check.stderr


def test_the_api_takes_only_registered_providers(gateway, make_tenant):
    bundle = make_tenant()
    with httpx.Client(base_url=f"{gateway}/api", headers=bundle.headers, timeout=30) as api:
        refused = api.post("/agents/", json={"slug": "elsewhere", "provider": "nowhere"})
        assert refused.status_code == 400
        assert "Unknown provider 'nowhere'. Supported: anthropic, openai." in refused.text
        assert api.post("/agents/", json={"slug": "elsewhere", "provider": "anthropic"}).status_code == 201
