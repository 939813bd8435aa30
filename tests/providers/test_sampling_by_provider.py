"""Sampling parameters reach each provider in the form it takes, and one a provider the agent may call
cannot take is a 400 naming it, before any run starts (never a failed run or a 502)."""

import openai
import pytest

from sessions.models import Run
from tests.conftest import openai_client
from tests.providers.test_openai_provider import sent_with


def chat(live, bundle, text, **params):
    return openai_client(live, bundle).chat.completions.create(
        model="assistant", messages=[{"role": "user", "content": text}], **params
    )


def test_sampling_reaches_an_openai_compatible_server_as_sent(live, make_tenant, openai_requests):
    bundle = make_tenant(provider="openai", model="fake-model", max_tokens=300)
    reply = chat(live, bundle, "sampling-oa-one", temperature=1.7, top_p=0.8, stop=["END", "STOP"], max_tokens=40,
                 reasoning_effort="low")
    assert reply.choices[0].message.content == "Echo: sampling-oa-one"
    [sent] = sent_with(openai_requests, "sampling-oa-one")
    body = sent["body"]
    assert body["temperature"] == 1.7, "OpenAI's own 0..2 scale, not capped as for Anthropic"
    assert (body["top_p"], body["stop"], body["max_tokens"], body["reasoning_effort"]) == (0.8, ["END", "STOP"], 40, "low")


def test_parameters_only_openai_compatible_servers_take_reach_them(live, make_tenant, openai_requests):
    bundle = make_tenant(provider="openai", model="fake-model")
    chat(live, bundle, "sampling-oa-two", seed=7, presence_penalty=0.5, frequency_penalty=-1)
    [sent] = sent_with(openai_requests, "sampling-oa-two")
    assert (sent["body"]["seed"], sent["body"]["presence_penalty"], sent["body"]["frequency_penalty"]) == (7, 0.5, -1)


@pytest.mark.parametrize("extra, name", [({"seed": 7}, "seed"), ({"presence_penalty": 0.5}, "presence_penalty")])
def test_a_parameter_a_fallback_provider_cannot_take_is_400_naming_it(live, make_tenant, extra, name):
    bundle = make_tenant(provider="openai", model="fake-model",
                         fallbacks=[{"provider": "anthropic", "model": "claude-backup"}])
    with pytest.raises(openai.BadRequestError) as raised:
        chat(live, bundle, "refused", **extra)
    error = raised.value.body
    assert error["param"] == name
    assert f"{name} is not supported by provider 'anthropic', which agent 'assistant' falls back to" in error["message"]
    assert not Run.objects.filter(tenant=bundle.tenant).exists(), "refused before any run started"


def test_a_parameter_the_agents_own_provider_cannot_take_is_400_naming_it(live, tenant):
    with pytest.raises(openai.BadRequestError) as raised:
        chat(live, tenant, "refused", seed=7)
    assert raised.value.body["param"] == "seed"
    assert "seed is not supported by provider 'anthropic', which agent 'assistant' runs on" in raised.value.body["message"]


def test_neutral_values_are_accepted_whatever_the_provider(live, make_tenant, openai_requests):
    bundle = make_tenant(provider="openai", model="fake-model",
                         fallbacks=[{"provider": "anthropic", "model": "claude-backup"}])
    reply = chat(live, bundle, "sampling-oa-three", presence_penalty=0, frequency_penalty=0, n=1)
    assert reply.choices[0].message.content == "Echo: sampling-oa-three"
    [sent] = sent_with(openai_requests, "sampling-oa-three")
    assert "presence_penalty" not in sent["body"] and "frequency_penalty" not in sent["body"]
