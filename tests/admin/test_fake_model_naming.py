"""`make run` names the demo agent's model for the server that answers it: `fake-echo` while the bundled fake
runs, the real default again once ANTHROPIC_API_KEY is set (scripts/run_all.sh calls this step each time)."""

import json
from io import StringIO

import httpx
import pytest
from django.core.management import CommandError, call_command

from tenants.models import Agent, ApiKey


def name_model(bundle, backend: str) -> dict:
    out = StringIO()
    call_command("create_tenant", bundle.tenant.slug, "--agent", bundle.agent.slug, "--model-backend", backend, stdout=out)
    return json.loads(out.getvalue())


def test_the_fake_is_named_for_what_it_is_and_the_default_comes_back(tenant, settings):
    keys = ApiKey.objects.filter(tenant=tenant.tenant).count()
    default = settings.BEAMCLAW["DEFAULT_MODEL"]
    assert Agent.objects.get(pk=tenant.agent.pk).model == default

    assert name_model(tenant, "fake") == {"tenant": tenant.tenant.slug, "agent": "assistant", "model": "fake-echo"}
    assert name_model(tenant, "fake")["model"] == "fake-echo", "a second make run changes nothing"
    assert Agent.objects.get(pk=tenant.agent.pk).model == "fake-echo"

    assert name_model(tenant, "anthropic")["model"] == default
    assert name_model(tenant, "anthropic")["model"] == default
    assert ApiKey.objects.filter(tenant=tenant.tenant).count() == keys, "naming the model issues no key"


def test_an_operators_own_model_is_left_alone(tenant):
    Agent.objects.filter(pk=tenant.agent.pk).update(model="claude-opus-4-1")
    assert name_model(tenant, "fake")["model"] == "claude-opus-4-1"
    assert name_model(tenant, "anthropic")["model"] == "claude-opus-4-1"


def test_an_unknown_agent_says_how_to_create_it(tenant):
    with pytest.raises(CommandError, match="has no agent 'ghost'. Create it first: python manage.py create_tenant"):
        call_command("create_tenant", tenant.tenant.slug, "--agent", "ghost", "--model-backend", "fake", stdout=StringIO())


def test_the_fake_server_answers_the_fake_name(live, tenant, fake_requests):
    name_model(tenant, "fake")

    reply = httpx.post(f"{live}/v1/chat/completions", headers=tenant.headers, timeout=30,
                       json={"model": "assistant", "messages": [{"role": "user", "content": "hello fake"}]})
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["content"] == "Echo: hello fake"
    assert any(r["body"]["model"] == "fake-echo" for r in fake_requests(20))
