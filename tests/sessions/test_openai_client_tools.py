"""OpenAI compatibility as clients rely on it: client-side function tools (round trips, streamed
tool_calls, mixed with the agent's own tools), history with `user`, stateless sessions, refused
parameters. Driven with the official `openai` package, and with raw SSE where the wire shape matters."""

import json

import httpx
import openai
import pytest

from sessions.models import AgentSession, Message, ToolCall
from tests.conftest import openai_client

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def test_client_tool_round_trip_without_a_session(live, tenant, fake_requests):
    client = openai_client(live, tenant, timeout=60)
    messages = [{"role": "user", "content": 'Weather in Paris? [[tool=get_weather:{"city":"Paris"}]]'}]
    first = client.chat.completions.create(model="assistant", messages=messages, tools=[WEATHER])

    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    offered = fake_requests(1)[-1]["body"]["tools"]
    assert {"name": "get_weather", "description": "The weather in a city",
            "input_schema": WEATHER["function"]["parameters"]} in offered

    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "18 degrees, sunny"}]
    second = client.chat.completions.create(model="assistant", messages=messages, tools=[WEATHER])
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content == "Tool results: 18 degrees, sunny"

    # The result continued the session that handed the call out, which then closed.
    [session] = AgentSession.objects.filter(tenant=tenant.tenant)
    assert session.status == AgentSession.Status.CLOSED
    roles = [(m.role, [b["type"] for b in m.content]) for m in session.messages.order_by("seq")]
    assert roles == [("user", ["text"]), ("assistant", ["tool_use"]), ("user", ["tool_result"]), ("assistant", ["text"])]
    assert ToolCall.objects.get(run__session=session).status == ToolCall.Status.SUCCEEDED


def test_streamed_tool_calls_arrive_as_openai_deltas(live, tenant):
    with httpx.stream(
        "POST", f"{live}/v1/chat/completions", headers=tenant.headers, timeout=60,
        json={"model": "assistant", "stream": True, "tools": [WEATHER],
              "messages": [{"role": "user", "content": 'Go [[tool=get_weather:{"city":"Oslo"}]]'}]},
    ) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[len("data: "):]) for line in lines[:-1]]
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    calls = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    assert calls[0]["index"] == 0 and calls[0]["id"].startswith("toolu_")
    assert calls[0]["function"] == {"name": "get_weather", "arguments": ""}
    assert json.loads("".join(c["function"].get("arguments", "") for c in calls)) == {"city": "Oslo"}
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "tool_calls"

    # The openai package assembles the same stream into one call.
    stream = openai_client(live, tenant, timeout=60).chat.completions.create(
        model="assistant", stream=True, tools=[WEATHER],
        messages=[{"role": "user", "content": 'Go [[tool=get_weather:{"city":"Rome"}]]'}],
    )
    arguments, names = "", []
    for chunk in stream:
        for call in chunk.choices[0].delta.tool_calls or [] if chunk.choices else []:
            names += [call.function.name] if call.function.name else []
            arguments += call.function.arguments or ""
    assert names == ["get_weather"] and json.loads(arguments) == {"city": "Rome"}


def test_mixed_server_and_client_tools_in_one_reply(live, make_tenant, fake_requests):
    bundle = make_tenant(tool_policy={"allow": ["exec"], "deny": []})
    client = openai_client(live, bundle, timeout=60)
    prompt = 'Both [[tool=exec:{"command":"echo server-side"}]] [[tool=get_weather:{"city":"Lima"}]]'
    first = client.chat.completions.create(model="assistant", user="mixer", tools=[WEATHER],
                                           messages=[{"role": "user", "content": prompt}])
    choice = first.choices[0]
    # The agent's own exec call ran on the server and is not shown; only the client's call comes back.
    assert choice.finish_reason == "tool_calls"
    assert [c.function.name for c in choice.message.tool_calls] == ["get_weather"]
    session = AgentSession.objects.get(tenant=bundle.tenant, key="agent:assistant:mixer")
    statuses = dict(ToolCall.objects.filter(run__session=session).values_list("name", "status"))
    assert statuses == {"exec": ToolCall.Status.SUCCEEDED, "get_weather": ToolCall.Status.AWAITING_CLIENT}

    call = choice.message.tool_calls[0]
    second = client.chat.completions.create(
        model="assistant", user="mixer", tools=[WEATHER],
        messages=[{"role": "user", "content": prompt}, choice.message.model_dump(exclude_none=True),
                  {"role": "tool", "tool_call_id": call.id, "content": "rainy"}],
    )
    assert second.choices[0].finish_reason == "stop"
    # One user turn carried both results, in the order the model asked for them.
    results = fake_requests(1)[-1]["body"]["messages"][-1]["content"]
    assert [r["type"] for r in results] == ["tool_result", "tool_result"]
    assert "server-side" in results[0]["content"][0]["text"] and results[1]["content"][0]["text"] == "rainy"
    assert second.choices[0].message.content.startswith("Tool results: ")


def test_a_new_message_instead_of_results_closes_the_calls(live, tenant, fake_requests):
    client = openai_client(live, tenant, timeout=60)
    client.chat.completions.create(model="assistant", user="drop", tools=[WEATHER],
                                   messages=[{"role": "user", "content": 'x [[tool=get_weather:{"city":"A"}]]'}])
    reply = client.chat.completions.create(model="assistant", user="drop",
                                           messages=[{"role": "user", "content": "never mind"}])
    assert reply.choices[0].message.content.startswith("Echo: never mind")
    sent = fake_requests(1)[-1]["body"]["messages"][-1]["content"]
    assert sent[0]["type"] == "tool_result" and sent[0]["is_error"]
    assert "no result" in sent[0]["content"][0]["text"]


def test_tool_results_for_nothing_waiting_are_refused(live, tenant):
    client = openai_client(live, tenant, timeout=60)
    client.chat.completions.create(model="assistant", user="r", messages=[{"role": "user", "content": "hi"}])
    history = [{"role": "user", "content": "hi"},
               {"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function",
                                                     "function": {"name": "get_weather", "arguments": "{}"}}]},
               {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
    with pytest.raises(openai.ConflictError) as refused:
        client.chat.completions.create(model="assistant", user="r", tools=[WEATHER], messages=history)
    assert "waiting for results" in refused.value.message


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"tools": [{"type": "function", "function": {"name": "exec"}}]}, "tools[0]", "like one of the tools of agent"),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type", "not supported"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice", "not among"),
        ({"tool_choice": "sometimes"}, "tool_choice", "must be"),
        ({"n": 2}, "n", "not supported"),
        ({"logprobs": True}, "logprobs", "not supported"),
        ({"seed": 7}, "seed", "not supported by provider"),
        ({"functions": [{"name": "f"}]}, "functions", "use tools"),
        ({"frobnicate": 1}, "frobnicate", "Unrecognized request argument"),
        ({"messages": [{"role": "tool", "tool_call_id": "x", "content": "r"}]}, "messages[0].tool_call_id", "answers no tool call"),
        ({"messages": [{"role": "user", "content": "q"},
                       {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                                                             "function": {"name": "f", "arguments": "{}"}}]},
                       {"role": "user", "content": "next"}]}, "messages", "has no `tool` message"),
    ],
)
def test_parameters_the_agent_cannot_honour_are_refused_by_name(live, make_tenant, body, param, words):
    bundle = make_tenant(tool_policy={"allow": ["exec"], "deny": []})
    request = {"model": "assistant", "messages": [{"role": "user", "content": "hi"}], **body}
    response = httpx.post(f"{live}/v1/chat/completions", headers=bundle.headers, json=request, timeout=30)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and words in error["message"], error


def test_user_history_seeds_a_new_session_and_the_server_keeps_it(live, tenant, fake_requests):
    client = openai_client(live, tenant, timeout=60)
    history = [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "earlier question"},
        {"role": "assistant", "content": "earlier answer"},
        {"role": "user", "content": "now"},
    ]
    raw = client.chat.completions.with_raw_response.create(model="assistant", user="seed", messages=history)
    assert raw.headers["X-Session-History"] == "seeded"
    assert raw.headers["X-Session-Key"] == "agent:assistant:seed"
    sent = fake_requests(1)[-1]["body"]
    assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "user"]
    assert "Answer in French." in sent["system"]

    # The session exists now: its transcript is authoritative, the client's copy of the past is not used.
    raw = client.chat.completions.with_raw_response.create(
        model="assistant", user="seed",
        messages=[{"role": "user", "content": "a rewritten past"}, {"role": "assistant", "content": "?"},
                  {"role": "user", "content": "again"}],
    )
    assert raw.headers["X-Session-History"] == "server"
    texts = [m.text for m in AgentSession.objects.get(tenant=tenant.tenant, key="agent:assistant:seed").messages.order_by("seq")]
    assert texts == ["earlier question", "earlier answer", "now", "Echo: now", "again", "Echo: again"]


def test_stateless_mode_uses_the_request_history_under_an_auditable_key(live, tenant, fake_requests):
    client = openai_client(live, tenant, timeout=60)
    for turn in ("one", "two"):
        raw = client.chat.completions.with_raw_response.create(
            model="assistant", user="bob", extra_headers={"X-Session-Mode": "stateless"},
            messages=[{"role": "user", "content": "before"}, {"role": "assistant", "content": "ok"},
                      {"role": "user", "content": turn}],
        )
        assert raw.headers["X-Session-History"] == "request"
        assert raw.parse().choices[0].message.content == f"Echo: {turn}"
        assert [m["role"] for m in fake_requests(1)[-1]["body"]["messages"]] == ["user", "assistant", "user"]
    sessions = AgentSession.objects.filter(tenant=tenant.tenant)
    assert sessions.count() == 2
    assert all(s.key.startswith("agent:assistant:bob:stateless:") and s.ephemeral for s in sessions)
    assert not AgentSession.objects.filter(tenant=tenant.tenant, key="agent:assistant:bob").exists()
    assert Message.objects.filter(session__in=sessions).count() == 8

    bad = httpx.post(f"{live}/v1/chat/completions", headers={**tenant.headers, "X-Session-Mode": "sticky"},
                     json={"model": "assistant", "messages": [{"role": "user", "content": "x"}]}, timeout=30)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "X-Session-Mode"
