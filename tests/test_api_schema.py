"""The machine-readable API descriptions, held against the running gateway: the OpenAPI document's /v1 paths
(sessions/openai_schema.py) and the AsyncAPI document of the WebSocket and the run events
(sessions/asyncapi.py). Real requests, responses, frames and events validate against their schemas, a
request the gateway refuses is refused by the schema too, and every /v1 route, WebSocket method and run
event the code has is in the documents (the lists come from the code)."""

import json
import re
import uuid

import httpx
import openai
import pytest
from jsonschema import Draft7Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from beamclaw_project import urls
from sessions import chat, events, openai_schema, responses
from sessions.asyncapi import openapi_to_json_schema
from sessions.consumers import EVENTS, GatewayConsumer
from tests.conftest import openai_client, sse_events
from tests.sessions.test_websocket import WS
from tools import approvals

DOCUMENT_URI = "urn:beamclaw:api-document"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
ASK_WEATHER = 'Weather in Paris? [[tool=get_weather:{"city":"Paris"}]]'


class Schemas:
    """An API document read as JSON Schema: instances are checked against the schema at a JSON pointer."""

    def __init__(self, document: dict):
        self.document = document
        self.registry = Registry().with_resource(
            DOCUMENT_URI, Resource.from_contents(document, default_specification=DRAFT7)
        )

    def errors(self, pointer: str, instance) -> list[str]:
        validator = Draft7Validator({"$ref": f"{DOCUMENT_URI}#{pointer}"}, registry=self.registry)
        return [
            f"{'/'.join(map(str, error.absolute_path)) or '(top)'}: {error.message[:300]}"
            for error in validator.iter_errors(instance)
        ]

    def check(self, pointer: str, instance) -> None:
        errors = self.errors(pointer, instance)
        assert not errors, f"{json.dumps(instance)[:400]}\ndoes not match {pointer}:\n" + "\n".join(errors)


def component(name: str) -> str:
    return f"/components/schemas/{name}"


@pytest.fixture
def openapi(live) -> Schemas:
    response = httpx.get(f"{live}/api/schema/", params={"format": "json"}, timeout=60)
    assert response.status_code == 200, response.text
    # OpenAPI 3.0 says `nullable`; JSON Schema says a null type.
    return Schemas(openapi_to_json_schema(response.json()))


@pytest.fixture
def asyncapi(live) -> Schemas:
    response = httpx.get(f"{live}/api/asyncapi.json", timeout=60)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    return Schemas(response.json())


# --- OpenAPI: /v1 ------------------------------------------------------------------------------------


def _template(path: str) -> str:
    """A path with its parameters blanked, so Django's `<str:model_id>` and OpenAPI's `{model}` compare."""
    return re.sub(r"<(?:\w+:)?\w+>|\{\w+\}", "{}", "/" + path.lstrip("/"))


def test_openapi_describes_every_v1_route(openapi):
    paths = openapi.document["paths"]
    routes = {_template(str(p.pattern)) for p in urls.urlpatterns if str(p.pattern).startswith("v1/")}
    assert routes == {_template(path) for path in paths if path.startswith("/v1/")}

    for path, method in (("/v1/chat/completions", "post"), ("/v1/responses", "post")):
        operation = paths[path][method]
        assert operation["requestBody"]["content"]["application/json"]["schema"]["$ref"].startswith("#/components/")
        assert set(operation["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}
        for status in ("400", "401", "404", "409", "413", "429", "502", "503", "504"):
            assert operation["responses"][status]["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/OpenAIError"
            }
    chat_operation = paths["/v1/chat/completions"]["post"]
    assert {p["name"] for p in chat_operation["parameters"]} == {
        "X-Session-Key", "X-Session-Mode", "X-Queue-Mode", "Idempotency-Key",
    }
    headers = chat_operation["responses"]["200"]["headers"]
    assert {"X-Run-Id", "X-Session-Id", "X-Session-Key", "X-Session-History"} <= set(headers)
    assert set(headers["X-Session-History"]["schema"]["enum"]) == {
        chat.HISTORY_REQUEST, chat.HISTORY_SEEDED, chat.HISTORY_SERVER,
    }
    assert openapi.document["externalDocs"]["url"] == "/api/asyncapi.json"


def test_request_schemas_take_exactly_the_parameters_the_parsers_know():
    """A parameter the parser learns (or drops) must be described (or leave the schema)."""
    schemas = openai_schema.SCHEMAS
    assert set(schemas["ChatCompletionRequest"]["properties"]) == chat._KNOWN
    assert set(schemas["ChatMessage"]["discriminator"]["mapping"]) == chat.ROLES
    assert set(schemas["ResponseCreateRequest"]["properties"]) == responses._KNOWN
    assert set(schemas["ResponseInputMessage"]["properties"]["role"]["enum"]) == set(responses.ITEM_ROLES)
    mode = next(p for p in openai_schema.PATHS["/v1/chat/completions"]["post"]["parameters"]
                if p["name"] == "X-Session-Mode")
    assert set(mode["schema"]["enum"]) == set(chat.SESSION_MODES)


def test_a_client_tool_round_trip_matches_the_schema(live, tenant, openapi):
    client = openai_client(live, tenant, timeout=60)
    first_body = {
        "model": "assistant",
        "messages": [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": [{"type": "text", "text": ASK_WEATHER}]},
        ],
        "tools": [WEATHER],
        "tool_choice": "auto",
        "parallel_tool_calls": True,
        "temperature": 0.5,
        "max_completion_tokens": 256,
        "stream": False,
        "n": 1,
        "logprobs": False,
        "metadata": {"purpose": "schema test"},
    }
    openapi.check(component("ChatCompletionRequest"), first_body)
    raw = client.chat.completions.with_raw_response.create(**first_body)
    first = raw.http_response.json()
    openapi.check(component("ChatCompletion"), first)
    assert first["choices"][0]["finish_reason"] == "tool_calls"
    assert raw.headers["X-Session-History"] in (chat.HISTORY_REQUEST, chat.HISTORY_SEEDED, chat.HISTORY_SERVER)
    uuid.UUID(raw.headers["X-Run-Id"])
    uuid.UUID(raw.headers["X-Session-Id"])

    reply = first["choices"][0]["message"]
    [call] = reply["tool_calls"]
    second_body = {
        "model": "assistant",
        "messages": [
            *first_body["messages"],
            reply,
            {"role": "tool", "tool_call_id": call["id"], "content": "18 degrees, sunny"},
        ],
        "tools": [WEATHER],
    }
    openapi.check(component("ChatCompletionRequest"), second_body)
    second = client.chat.completions.with_raw_response.create(**second_body).http_response.json()
    openapi.check(component("ChatCompletion"), second)
    assert second["choices"][0]["message"]["content"] == "Tool results: 18 degrees, sunny"


@pytest.mark.parametrize("content", ["one two three", ASK_WEATHER], ids=["text", "tool-calls"])
def test_streamed_chunks_match_the_schema(live, tenant, openapi, content):
    body = {"model": "assistant", "stream": True, "stream_options": {"include_usage": True}, "tools": [WEATHER],
            "messages": [{"role": "user", "content": content}]}
    openapi.check(component("ChatCompletionRequest"), body)
    with httpx.stream("POST", f"{live}/v1/chat/completions", json=body, headers=tenant.headers, timeout=60) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line and not line.startswith(":")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    for chunk in chunks:
        openapi.check(component("ChatCompletionStreamEvent"), chunk)
    assert chunks[-1]["usage"]["total_tokens"] > 0
    finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1]
    assert finish == ("tool_calls" if "[[tool=" in content else "stop")


def test_what_the_gateway_refuses_the_schema_refuses(live, tenant, openapi):
    base = {"model": "assistant", "messages": [{"role": "user", "content": "hi"}]}
    for change, param in (({"n": 2}, "n"), ({"logit_bias": {"1": 5}}, "logit_bias"), ({"frobnicate": 1}, "frobnicate")):
        body = {**base, **change}
        assert openapi.errors(component("ChatCompletionRequest"), body), f"the schema takes {change}"
        response = httpx.post(f"{live}/v1/chat/completions", json=body, headers=tenant.headers, timeout=30)
        assert response.status_code == 400
        openapi.check(component("OpenAIError"), response.json())
        assert response.json()["error"]["param"] == param

    missing = httpx.post(f"{live}/v1/chat/completions", json={**base, "model": "nope"}, headers=tenant.headers, timeout=30)
    assert missing.status_code == 404
    openapi.check(component("OpenAIError"), missing.json())


def test_models_match_the_schema(live, tenant, openapi):
    listed = httpx.get(f"{live}/v1/models", headers=tenant.headers, timeout=30)
    openapi.check(component("OpenAIModelList"), listed.json())
    one = httpx.get(f"{live}/v1/models/assistant", headers=tenant.headers, timeout=30)
    openapi.check(component("OpenAIModel"), one.json())


def test_responses_match_the_schema(live, tenant, openapi):
    tool = {"type": "function", **WEATHER["function"], "strict": True}
    first_body = {
        "model": "assistant",
        "instructions": "Answer briefly.",
        "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": ASK_WEATHER}]}],
        "tools": [tool],
        "tool_choice": "auto",
        "metadata": {"ticket": "42"},
        "text": {"format": {"type": "text"}},
    }
    openapi.check(component("ResponseCreateRequest"), first_body)
    first = httpx.post(f"{live}/v1/responses", json=first_body, headers=tenant.headers, timeout=60)
    assert first.status_code == 200, first.text
    openapi.check(component("Response"), first.json())
    [call] = [item for item in first.json()["output"] if item["type"] == "function_call"]

    second_body = {
        "model": "assistant",
        "previous_response_id": first.json()["id"],
        "input": [{"type": "function_call_output", "call_id": call["call_id"], "output": "18 degrees, sunny"}],
        "tools": [tool],
        "stream": True,
    }
    openapi.check(component("ResponseCreateRequest"), second_body)
    with httpx.stream("POST", f"{live}/v1/responses", json=second_body, headers=tenant.headers, timeout=60) as response:
        assert response.status_code == 200
        streamed = [event for event in sse_events(response.iter_lines()) if "data" in event]
    for event in streamed:
        openapi.check(component("ResponseStreamEvent"), event["data"])
        assert event["event"] == event["data"]["type"]
    assert streamed[-1]["event"] == "response.completed"
    final = streamed[-1]["data"]["response"]
    assert final["output_text"] == "Tool results: 18 degrees, sunny"

    stored = httpx.get(f"{live}/v1/responses/{final['id']}", headers=tenant.headers, timeout=30)
    openapi.check(component("Response"), stored.json())
    unknown = httpx.get(f"{live}/v1/responses/resp_{uuid.uuid4().hex}", headers=tenant.headers, timeout=30)
    assert unknown.status_code == 404
    openapi.check(component("OpenAIError"), unknown.json())


# --- AsyncAPI: the WebSocket and the run events -------------------------------------------------------


def published_events() -> set[str]:
    """Every event name the code defines: sessions/events.py's and the approvals'."""
    names = {value for name, value in vars(events).items()
             if name.isupper() and not name.startswith("_") and isinstance(value, str)}
    return names | {approvals.APPROVAL_REQUESTED, approvals.APPROVAL_RESOLVED}


def resolved(document: dict, node: dict) -> dict:
    """`node`, or what its `$ref` (a pointer into `document`) names."""
    while "$ref" in node:
        target = document
        for key in node["$ref"].removeprefix("#/").split("/"):
            target = target[key]
        node = target
    return node


def test_asyncapi_lists_every_method_and_event(live, asyncapi):
    document = asyncapi.document
    assert document["asyncapi"].startswith("3.")
    gateway = document["channels"]["gateway"]
    assert gateway["address"] == "/ws/"
    for method in GatewayConsumer.METHODS:
        operation = document["operations"][method]
        assert operation["action"] == "receive"
        request = resolved(document, gateway["messages"][f"{method}.request"]["payload"])
        assert request["properties"]["method"] == {"const": method}
        assert operation["messages"] == [{"$ref": f"#/channels/gateway/messages/{method}.request"}]
        assert {"$ref": f"#/channels/gateway/messages/{method}.response"} in operation["reply"]["messages"]

    names = published_events()
    assert set(EVENTS) == names, "the WebSocket forwards every event the workers publish"
    run_events = document["channels"]["runEvents"]
    for event in names:
        frame = resolved(document, gateway["messages"][f"{event}.event"]["payload"])
        assert frame["properties"]["event"] == {"const": event}
        assert event in run_events["messages"]

    # Served as the OpenAPI document is: to anyone, read-only.
    post = httpx.post(f"{live}/api/asyncapi.json", json={}, timeout=30)
    assert post.status_code == 405 and post.json()["code"] == "method_not_allowed"


def _check_frame(asyncapi: Schemas, frame: dict, method: str | None = None) -> None:
    if frame["type"] == "event":
        name = f"{frame['event']}.event"
    else:
        name = f"{method}.response" if frame["ok"] else "error.response"
    asyncapi.check(f"/channels/gateway/messages/{name}/payload", frame)


def test_real_websocket_frames_match_the_asyncapi(live, make_tenant, asyncapi):
    bundle = make_tenant(approval={"mode": "always", "allowlist": []})
    client = WS(live)
    try:
        frames: list[tuple[str, dict]] = []

        def call(method: str, params: dict | None = None) -> dict:
            asyncapi.check(f"/channels/gateway/messages/{method}.request/payload",
                           {"type": "req", "id": "check", "method": method, "params": params or {}})
            frame = client.call(method, params)
            frames.append((method, frame))
            return frame

        assert call("connect", {"token": bundle.api_key})["ok"]
        call("health")
        call("agents.list")
        session = call("sessions.create", {"agent": "assistant", "key": "schema"})["payload"]
        call("sessions.list", {"agent": "assistant"})
        call("sessions.subscribe", {"session": session["id"]})
        message = '[[tool=exec:{"command": "echo hi"}]]'
        run_id = call("chat.send", {"session": session["id"], "message": message})["payload"]["run_id"]
        while not any(e["event"] == approvals.APPROVAL_REQUESTED for e in client.events):
            client.events.append(client.recv())
        [pending] = call("approvals.list")["payload"]["approvals"]
        call("approvals.resolve", {"approval": pending["id"], "decision": "deny"})
        run_events = client.events_until_done(run_id)
        call("sessions.history", {"session": session["id"], "limit": 10})
        call("chat.abort", {"run_id": run_id})
        call("sessions.compact", {"session": session["id"]})
        call("sessions.reset", {"session": session["id"]})
        call("approvals.resolve", {"approval": str(uuid.uuid4()), "decision": "allow"})
        frames.append(("no.such.method", client.call("no.such.method")))
    finally:
        client.close()

    for method, frame in frames:
        _check_frame(asyncapi, frame, method)
    for event in client.events:
        _check_frame(asyncapi, event)
    seen = {e["event"] for e in run_events}
    assert {events.RUN_STARTED, events.TOOL_CALL, events.TOOL_RESULT, approvals.APPROVAL_REQUESTED,
            approvals.APPROVAL_RESOLVED, events.TEXT_DELTA, events.RUN_COMPLETED} <= seen
    # Every method answered at least once with its payload (compacting may be refused: little to compact).
    answered = {method for method, frame in frames if frame["ok"]}
    assert answered >= set(GatewayConsumer.METHODS) - {"sessions.compact"}
    assert any(not frame["ok"] for _, frame in frames)


def test_real_sse_events_match_the_asyncapi(live, tenant, asyncapi):
    api = httpx.Client(base_url=f"{live}/api", headers=tenant.headers, timeout=60)
    session = api.post("/sessions/", json={"agent": "assistant"}).json()
    accepted = api.post(f"/sessions/{session['id']}/messages/", json={"content": "[[tool=teleport:{}]] then hi"})
    assert accepted.status_code == 202, accepted.text
    run_id = accepted.json()["run"]["id"]
    with api.stream("GET", f"/runs/{run_id}/events/") as response:
        assert response.status_code == 200
        received = list(sse_events(response.iter_lines()))

    for event in received:
        asyncapi.check(f"/channels/runEvents/messages/{event['event']}/payload", event["data"])
        assert event["data"]["seq"] == event["id"]
    assert [e["event"] for e in received][0] == events.RUN_STARTED
    assert {events.TOOL_CALL, events.TOOL_RESULT, events.TEXT_DELTA, events.RUN_COMPLETED} <= {e["event"] for e in received}
