"""The Responses API (POST /v1/responses, GET /v1/responses/{id}), driven with the official `openai` client
and with a raw SSE parser."""

import json

import httpx
import openai
import pytest

from sessions.models import AgentSession, Run
from tests.conftest import assert_whole_deltas, openai_client, sse_events
from tests.sessions.test_content import data_url, png

WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    "strict": True,
}


def post(live, bundle, body: dict, **headers) -> httpx.Response:
    return httpx.post(f"{live}/v1/responses", json=body, headers={**bundle.headers, **headers}, timeout=30)


def test_text_reply_and_retrieve(live, tenant):
    client = openai_client(live, tenant)
    response = client.responses.create(model="assistant", input="hello responses", metadata={"ticket": "42"})
    assert response.object == "response"
    assert response.status == "completed"
    assert response.output_text == "Echo: hello responses"
    [message] = response.output
    assert message.type == "message" and message.role == "assistant" and message.status == "completed"
    assert message.id.startswith("msg_")
    assert message.content[0].type == "output_text" and message.content[0].text == "Echo: hello responses"
    assert response.usage.output_tokens == 3
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
    assert response.metadata == {"ticket": "42"}
    assert response.model == "assistant"

    # The response is its run: the id says which, and GET rebuilds the same object from Postgres.
    run = Run.objects.get(tenant=tenant.tenant)
    assert response.id == f"resp_{run.pk.hex}"
    assert run.status == Run.Status.SUCCEEDED
    again = client.responses.retrieve(response.id)
    assert again.model_dump() == response.model_dump()


def test_streaming_with_the_openai_client(live, tenant):
    client = openai_client(live, tenant)
    with client.responses.stream(model="assistant", input="one two three [[delay_ms=5]]") as stream:
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert_whole_deltas(deltas, ["Echo: ", "one ", "two ", "three"])
    assert final.status == "completed"
    assert final.output_text == "Echo: one two three"
    assert client.responses.retrieve(final.id).output_text == "Echo: one two three"

    kinds = [event.type for event in client.responses.create(model="assistant", input="hi", stream=True)]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"


def test_raw_event_stream_order_and_sequence_numbers(live, tenant):
    with httpx.stream(
        "POST", f"{live}/v1/responses", headers=tenant.headers, timeout=30,
        json={"model": "assistant", "stream": True, "input": "alpha beta [[delay_ms=20]]"},
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["X-Run-Id"] and response.headers["X-Session-Id"]
        received = list(sse_events(response.iter_lines()))
    kinds = [event["event"] for event in received]
    text_deltas = kinds.count("response.output_text.delta")  # 1-3: deltas within 2 ms travel together
    assert kinds == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added",
        *["response.output_text.delta"] * text_deltas,
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.completed",
    ]
    assert_whole_deltas([e["data"]["delta"] for e in received if e["event"] == "response.output_text.delta"],
                        ["Echo: ", "alpha ", "beta"])
    assert [event["data"]["type"] for event in received] == kinds, "each event repeats its name as data.type"
    assert [event["data"]["sequence_number"] for event in received] == list(range(len(received)))
    message_id = received[2]["data"]["item"]["id"]
    assert {event["data"]["item_id"] for event in received[3:-2]} == {message_id}
    assert received[-4]["data"]["text"] == "Echo: alpha beta"
    completed = received[-1]["data"]["response"]
    assert completed["status"] == "completed"
    assert completed["output"][0]["id"] == message_id
    assert completed["id"] == received[0]["data"]["response"]["id"]


def test_previous_response_id_continues_the_conversation(live, tenant, fake_requests):
    client = openai_client(live, tenant)
    first = client.responses.create(model="assistant", input="my name is Ada")
    second = client.responses.create(model="assistant", input="what is my name?", previous_response_id=first.id)
    assert second.output_text == "Echo: what is my name?"
    assert second.previous_response_id == first.id

    # The model saw the earlier turn, kept by the server.
    sent = fake_requests(1)[0]["body"]["messages"]
    assert [(m["role"], m["content"][0]["text"]) for m in sent] == [
        ("user", "my name is Ada"), ("assistant", "Echo: my name is Ada"), ("user", "what is my name?"),
    ]
    runs = Run.objects.filter(tenant=tenant.tenant)
    assert len({run.session_id for run in runs}) == 1
    session = AgentSession.objects.get(tenant=tenant.tenant)
    assert not session.ephemeral and session.status == AgentSession.Status.ACTIVE

    # A conversation goes on from its latest response only.
    response = post(live, tenant, {"model": "assistant", "input": "again", "previous_response_id": first.id})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "previous_response_id"


def test_session_key_header_names_the_conversation(live, tenant, fake_requests):
    for text in ("first", "second"):
        response = post(live, tenant, {"model": "assistant", "input": text, "user": "someone"},
                        **{"X-Session-Key": "support"})
        assert response.status_code == 200, response.text
    session = AgentSession.objects.get(tenant=tenant.tenant, key="agent:assistant:support")
    assert session.runs.count() == 2
    assert [m["role"] for m in fake_requests(1)[0]["body"]["messages"]] == ["user", "assistant", "user"]
    # `user` is only echoed back: it names no session here.
    assert response.json()["user"] == "someone"
    assert AgentSession.objects.filter(tenant=tenant.tenant).count() == 1


def test_a_retry_under_the_same_idempotency_key_is_the_same_response(live, tenant):
    body = {"model": "assistant", "input": "start"}
    first, again = (post(live, tenant, body, **{"Idempotency-Key": "start-1"}) for _ in range(2))
    assert first.status_code == again.status_code == 200
    assert first.json()["id"] == again.json()["id"]

    # A repeated continuation is the same request too, not a branch from an older response.
    follow = {"model": "assistant", "input": "next", "previous_response_id": first.json()["id"]}
    second, repeated = (post(live, tenant, follow, **{"Idempotency-Key": "next-1"}) for _ in range(2))
    assert repeated.status_code == 200, repeated.text
    assert second.json()["id"] == repeated.json()["id"]
    assert Run.objects.filter(tenant=tenant.tenant).count() == 2


def test_full_history_in_input_seeds_a_new_conversation(live, tenant, fake_requests):
    reply = openai_client(live, tenant).responses.create(
        model="assistant",
        input=[
            {"role": "user", "content": "earlier question"},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "earlier answer"}]},
            {"role": "user", "content": [{"type": "input_text", "text": "now this"}]},
        ],
    )
    assert reply.output_text == "Echo: now this"
    sent = fake_requests(1)[0]["body"]["messages"]
    assert [(m["role"], m["content"][0]["text"]) for m in sent] == [
        ("user", "earlier question"), ("assistant", "earlier answer"), ("user", "now this"),
    ]


def test_instructions_and_developer_messages_reach_the_system_prompt(live, make_tenant, fake_requests):
    bundle = make_tenant(system_prompt="You are the test agent.")
    openai_client(live, bundle).responses.create(
        model="assistant",
        instructions="Answer briefly.",
        input=[{"role": "developer", "content": "Use metric units."}, {"role": "user", "content": "hi"}],
        max_output_tokens=50,
        temperature=0.5,
    )
    body = fake_requests(1)[0]["body"]
    assert body["system"] == "You are the test agent.\n\nAnswer briefly.\n\nUse metric units."
    assert body["max_tokens"] == 50
    assert [m["role"] for m in body["messages"]] == ["user"]


def test_an_image_reaches_the_model(live, tenant):
    image = png(2, 2)
    reply = openai_client(live, tenant).responses.create(
        model="assistant",
        input=[{"role": "user", "content": [
            {"type": "input_text", "text": "what is this?"},
            {"type": "input_image", "image_url": data_url(image), "detail": "auto"},
        ]}],
    )
    assert reply.output_text == f"Echo: what is this? [image: image/png, {len(image)} bytes]"


def test_client_function_tool_round_trip(live, tenant, fake_requests):
    client = openai_client(live, tenant)
    first = client.responses.create(
        model="assistant", tools=[WEATHER_TOOL], input='weather? [[tool=get_weather:{"city":"Paris"}]]',
    )
    assert first.status == "completed"
    [call] = first.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Paris"}
    assert call.id == f"fc_{call.call_id}"
    # The model was offered the client's tool in the Messages API's shape.
    offered = {tool["name"]: tool for tool in fake_requests(1)[0]["body"]["tools"]}
    assert offered["get_weather"]["input_schema"]["required"] == ["city"]
    assert client.responses.retrieve(first.id).output == first.output

    second = client.responses.create(
        model="assistant", tools=[WEATHER_TOOL], previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"}],
    )
    assert second.output_text == "Tool results: sunny, 21 C"
    sent = fake_requests(1)[0]["body"]["messages"]
    assert sent[-2]["content"][-1] == {"type": "tool_use", "id": call.call_id, "name": "get_weather", "input": {"city": "Paris"}}
    assert sent[-1]["content"][0]["tool_use_id"] == call.call_id


def test_client_function_call_streams_as_items(live, tenant):
    with httpx.stream(
        "POST", f"{live}/v1/responses", headers=tenant.headers, timeout=30,
        json={"model": "assistant", "stream": True, "tools": [WEATHER_TOOL],
              "input": 'go [[tool=get_weather:{"city":"Oslo"}]]'},
    ) as response:
        received = list(sse_events(response.iter_lines()))
    kinds = [event["event"] for event in received]
    assert kinds == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.output_item.done", "response.completed",
    ]
    item = received[-2]["data"]["item"]
    assert item["type"] == "function_call" and json.loads(item["arguments"]) == {"city": "Oslo"}
    assert received[-1]["data"]["response"]["output"] == [item]


def test_text_of_every_step_streams_into_one_message(live, make_tenant):
    bundle = make_tenant(tool_policy={"allow": ["exec"], "deny": []})
    with httpx.stream(
        "POST", f"{live}/v1/responses", headers=bundle.headers, timeout=60,
        json={"model": "assistant", "stream": True,
              "input": 'go [[text_before_tool=Let me look.]] [[tool=exec:{"command":"echo from-the-server"}]]'},
    ) as response:
        received = list(sse_events(response.iter_lines()))
    added = [e["data"]["item"] for e in received if e["event"] == "response.output_item.added"]
    assert [item["type"] for item in added] == ["message"], "the agent's own tool call is not shown"
    deltas = "".join(e["data"]["delta"] for e in received if e["event"] == "response.output_text.delta")
    assert deltas.startswith("Let me look.Tool results: ") and "from-the-server" in deltas
    # The message's final text is the run's result, its last reply (as Chat Completions answers).
    final = received[-1]["data"]["response"]
    assert final["status"] == "completed"
    assert final["output_text"].startswith("Tool results: ") and "from-the-server" in final["output_text"]


def test_whole_history_with_function_calls_and_no_previous_response(live, tenant, fake_requests):
    client = openai_client(live, tenant)
    question = {"role": "user", "content": 'weather? [[tool=get_weather:{"city":"Rome"}]]'}
    first = client.responses.create(model="assistant", tools=[WEATHER_TOOL], input=[question], store=False)
    [call] = first.output
    # A client that keeps the conversation itself sends it all back, its own output items included.
    second = client.responses.create(
        model="assistant", tools=[WEATHER_TOOL], store=False,
        input=[question, call.model_dump(exclude_none=True),
               {"type": "function_call_output", "call_id": call.call_id, "output": "hot"}],
    )
    assert second.output_text == "Tool results: hot"
    sent = fake_requests(1)[0]["body"]["messages"]
    assert [(m["role"], [b["type"] for b in m["content"]]) for m in sent] == [
        ("user", ["text"]), ("assistant", ["tool_use"]), ("user", ["tool_result"]),
    ]


@pytest.mark.parametrize(
    "changes, param",
    [
        ({"input": None}, "input"),
        ({"input": []}, "input"),
        ({"model": ""}, "model"),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"background": True}, "background"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"include": ["message.output_text.logprobs"]}, "include"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"temperature": 3}, "temperature"),
        ({"reasoning": {"effort": "extreme"}}, "reasoning.effort"),
        ({"text": {"verbosity": "low"}}, "text.verbosity"),
        ({"text": {"format": {"type": "xml"}}}, "text.format"),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        ({"frobnicate": 1}, "frobnicate"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
        ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}, "input[0].content[0].type"),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]}, "input[0].content[0].file_id"),
        ({"input": [{"type": "function_call_output", "call_id": "call_1", "output": "x"}]}, "input[0].call_id"),
    ],
)
def test_bad_input_is_a_400_naming_the_parameter(live, tenant, changes, param):
    body = {"model": "assistant", "input": "hi", **changes}
    response = post(live, tenant, {k: v for k, v in body.items() if v is not None})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param, error
    assert error["message"] and error["type"] == "invalid_request_error"
    assert not Run.objects.filter(tenant=tenant.tenant).exists()


def test_another_tenants_response_is_not_found(live, make_tenant):
    mine, other = make_tenant(), make_tenant()
    theirs = openai_client(live, other).responses.create(model="assistant", input="private")
    with pytest.raises(openai.NotFoundError) as caught:
        openai_client(live, mine).responses.create(model="assistant", input="hi", previous_response_id=theirs.id)
    assert caught.value.body["param"] == "previous_response_id"
    with pytest.raises(openai.NotFoundError):
        openai_client(live, mine).responses.retrieve(theirs.id)
    for unknown in ("resp_nope", "resp_" + "0" * 32):
        assert httpx.get(f"{live}/v1/responses/{unknown}", headers=mine.headers, timeout=10).status_code == 404
    response = post(live, mine, {"model": "assistant", "input": "hi", "previous_response_id": "resp_nope"})
    assert response.status_code == 404 and response.json()["error"]["param"] == "previous_response_id"
    assert not Run.objects.filter(tenant=mine.tenant).exists()


def test_credentials_come_first_and_delete_is_refused(live, tenant):
    response = httpx.post(f"{live}/v1/responses", json={"model": "assistant"}, timeout=10)
    assert response.status_code == 401 and response.json()["error"]["code"]
    reply = openai_client(live, tenant).responses.create(model="assistant", input="keep me")
    response = httpx.delete(f"{live}/v1/responses/{reply.id}", headers=tenant.headers, timeout=10)
    assert response.status_code == 405 and response.headers["Allow"] == "GET"
    assert openai_client(live, tenant).responses.retrieve(reply.id).output_text == "Echo: keep me"
