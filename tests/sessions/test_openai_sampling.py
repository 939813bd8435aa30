"""Sampling parameters from OpenAI clients reach the model in the form the Messages API takes, and
parameters with no counterpart are refused by name instead of being dropped silently."""

import openai
import pytest

from tests.conftest import openai_client


def _last_model_request(fake_requests, marker: str) -> dict:
    bodies = [r["body"] for r in fake_requests(200) if marker in str((r["body"] or {}).get("messages"))]
    assert bodies, f"the model never saw a request containing {marker!r}"
    return bodies[-1]


def test_temperature_top_p_stop_and_effort_reach_the_model(live, tenant, fake_requests):
    reply = openai_client(live, tenant).chat.completions.create(
        model="assistant",
        messages=[{"role": "user", "content": "sampling-one"}],
        temperature=0.3,
        top_p=0.9,
        stop=["END"],
        reasoning_effort="low",
    )
    assert reply.choices[0].message.content == "Echo: sampling-one"
    sent = _last_model_request(fake_requests, "sampling-one")
    assert sent["temperature"] == 0.3
    assert sent["top_p"] == 0.9
    assert sent["stop_sequences"] == ["END"]
    assert sent["output_config"] == {"effort": "low"}


def test_openai_temperature_above_one_is_anthropics_maximum(live, tenant, fake_requests):
    stream = openai_client(live, tenant).chat.completions.create(
        model="assistant", messages=[{"role": "user", "content": "sampling-two"}], temperature=1.7, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "Echo: sampling-two"
    assert _last_model_request(fake_requests, "sampling-two")["temperature"] == 1.0


def test_neutral_defaults_that_clients_send_are_accepted(live, tenant):
    reply = openai_client(live, tenant).chat.completions.create(
        model="assistant", messages=[{"role": "user", "content": "defaults"}],
        n=1, presence_penalty=0, frequency_penalty=0, logprobs=False,
    )
    assert reply.choices[0].message.content == "Echo: defaults"


@pytest.mark.parametrize(
    "extra, name",
    [
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"frequency_penalty": -1}, "frequency_penalty"),
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"seed": 7}, "seed"),
        ({"top_p": 1.5}, "top_p"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"reasoning_effort": "extreme"}, "reasoning_effort"),
    ],
)
def test_unsupported_sampling_parameter_is_400_naming_it(live, tenant, extra, name):
    with pytest.raises(openai.BadRequestError) as raised:
        openai_client(live, tenant).chat.completions.create(
            model="assistant", messages=[{"role": "user", "content": "nope"}], **extra
        )
    error = raised.value.body
    assert error["param"] == name and name in error["message"]
