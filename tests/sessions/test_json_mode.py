"""JSON mode: `response_format` honoured end to end, driven with the official `openai` client.

The fake model answers what the test scripts (`[[reply=...]]`, `[[replies=FIRST||SECOND]]` for a model
that answers the repair request differently), and records what it was asked.
"""

import json
import uuid

import openai
import pytest

from beamclaw_project.errors import InvalidInput
from sessions.models import AgentSession, Message, Run
from sessions.providers.base import Completion
from sessions.runs.json_mode import REPAIR_PARAM, reply_check, reply_result_text, response_format_parse
from tests.conftest import openai_client

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
PERSON_FORMAT = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
ADA = {"name": "Ada", "age": 36}


def ask(live, bundle, text: str, response_format: dict, **options):
    """Ask in JSON mode; returns (the reply's content, a marker that finds the model's requests)."""
    marker = f"json-{uuid.uuid4().hex[:8]}"
    reply = openai_client(live, bundle).chat.completions.create(
        model="assistant", messages=[{"role": "user", "content": f"{marker} {text}"}],
        response_format=response_format, **options,
    )
    return reply, marker


def model_requests(fake_requests, marker: str) -> list[dict]:
    """The bodies the fake model received for the conversation that began with `marker`, oldest first."""
    return [r["body"] for r in fake_requests(200) if marker in json.dumps((r["body"] or {}).get("messages"))]


def transcript(bundle) -> list[tuple[str, str]]:
    session = AgentSession.objects.get(tenant=bundle.tenant)
    return [(m.role, m.text) for m in session.messages.order_by("seq")]


def test_schema_reply_valid_at_once_and_the_model_saw_the_schema(live, tenant, fake_requests):
    reply, marker = ask(live, tenant, f"[[reply={json.dumps(ADA)}]]", PERSON_FORMAT)

    assert json.loads(reply.choices[0].message.content) == ADA
    assert reply.choices[0].finish_reason == "stop"
    [request] = model_requests(fake_requests, marker)
    # The instruction comes last in the system prompt, the schema on its last line.
    assert 'JSON Schema "person"' in request["system"]
    assert "no Markdown code fence" in request["system"]
    assert json.loads(request["system"].rsplit("\n", 1)[-1]) == PERSON


def test_instruction_follows_the_requests_own_system_text(live, tenant, fake_requests):
    marker = f"json-{uuid.uuid4().hex[:8]}"
    openai_client(live, tenant).chat.completions.create(
        model="assistant", response_format={"type": "json_object"},
        messages=[{"role": "system", "content": "You list fruit."},
                  {"role": "user", "content": f'{marker} [[reply={{"fruit": ["apple"]}}]]'}],
    )
    system = model_requests(fake_requests, marker)[0]["system"]
    assert system.index("You list fruit.") < system.index("single JSON object and nothing else")


def test_fenced_reply_comes_back_clean_and_the_transcript_keeps_it_as_written(live, tenant):
    fenced = f"```json\n{json.dumps(ADA, indent=2)}\n```"
    reply, _ = ask(live, tenant, f"[[reply={fenced}]]", PERSON_FORMAT)

    content = reply.choices[0].message.content
    assert content == json.dumps(ADA, indent=2)
    assert transcript(tenant)[-1] == ("assistant", fenced)
    # What a reader whose event stream was lost gets, rebuilt from the transcript, is the same clean JSON.
    run = Run.objects.get(session__tenant=tenant.tenant)
    reply_message = run.messages.get(role=Message.Role.ASSISTANT)
    assert reply_result_text(run.params["response_format"], reply_message.content) == content


def test_invalid_reply_is_repaired_once(live, tenant, fake_requests):
    reply, marker = ask(live, tenant, f'[[replies=Sure! {{"name": "Ada"}}||{json.dumps(ADA)}]]', PERSON_FORMAT)

    assert json.loads(reply.choices[0].message.content) == ADA
    first, second = model_requests(fake_requests, marker)
    # The second call carries the first reply and a user message saying what was wrong with it.
    assert [m["role"] for m in second["messages"]] == ["user", "assistant", "user"]
    repair = second["messages"][2]["content"][0]["text"]
    assert repair.startswith("Your reply was not valid JSON: Expecting value")
    assert repair.endswith('Reply again with only the JSON object matching the JSON Schema "person": no prose, no code fence.')
    assert second["system"] == first["system"]

    roles = [role for role, _ in transcript(tenant)]
    assert roles == ["user", "assistant", "user", "assistant"]
    run = Run.objects.get(session__tenant=tenant.tenant)
    assert run.status == Run.Status.SUCCEEDED and run.params[REPAIR_PARAM] == 0


def test_reply_that_breaks_the_schema_is_repaired_with_the_path_at_fault(live, tenant, fake_requests):
    wrong = {"name": "Ada", "age": "thirty-six"}
    reply, marker = ask(live, tenant, f"[[replies={json.dumps(wrong)}||{json.dumps(ADA)}]]", PERSON_FORMAT)

    assert json.loads(reply.choices[0].message.content) == ADA
    repair = model_requests(fake_requests, marker)[1]["messages"][2]["content"][0]["text"]
    assert repair.startswith('Your reply did not match the JSON Schema "person": at $.age, ')
    assert '"thirty-six" is not of type "integer"' in repair


def test_repair_streamed_sends_only_the_valid_json(live, tenant, fake_requests):
    marker = f"json-{uuid.uuid4().hex[:8]}"
    stream = openai_client(live, tenant).chat.completions.create(
        model="assistant", stream=True, response_format=PERSON_FORMAT,
        messages=[{"role": "user", "content": f"{marker} [[replies=not json at all||{json.dumps(ADA)}]]"}],
    )
    chunks = [c for c in stream if c.choices]
    content = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert json.loads(content) == ADA
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert len(model_requests(fake_requests, marker)) == 2


def test_json_object_reply_that_is_an_array_is_repaired(live, tenant, fake_requests):
    reply, marker = ask(live, tenant, '[[replies=[1, 2]||{"items": [1, 2]}]]', {"type": "json_object"})

    assert json.loads(reply.choices[0].message.content) == {"items": [1, 2]}
    repair = model_requests(fake_requests, marker)[1]["messages"][2]["content"][0]["text"]
    assert repair.startswith("Your reply was JSON but an array, not an object.")


def test_invalid_twice_fails_with_invalid_json(live, tenant, fake_requests):
    with pytest.raises(openai.APIStatusError) as caught:
        ask(live, tenant, "[[replies=I am sorry||Still prose, sorry]]", PERSON_FORMAT)

    error = caught.value
    assert error.status_code == 502
    assert error.code == "invalid_json"
    assert "After one repair attempt, the model's reply still was not valid JSON" in error.message
    assert "simpler schema" in error.message and "stronger model" in error.message
    run = Run.objects.get(session__tenant=tenant.tenant)
    assert run.status == Run.Status.FAILED and run.error_code == "invalid_json"
    # Both replies and the repair request stay in the transcript.
    assert [role for role, _ in transcript(tenant)] == ["user", "assistant", "user", "assistant"]


def test_invalid_twice_streamed_ends_in_an_error(live, tenant):
    stream = openai_client(live, tenant).chat.completions.create(
        model="assistant", stream=True, response_format={"type": "json_object"},
        messages=[{"role": "user", "content": "[[replies=nope||still nope]]"}],
    )
    with pytest.raises(openai.APIError) as caught:
        list(stream)
    assert "not valid JSON" in caught.value.message
    assert caught.value.code == "invalid_json"


def test_tool_calls_work_in_json_mode_and_only_the_final_reply_is_checked(live, tenant, fake_requests):
    # The fake calls a tool first (which fails: the agent has no such tool), then answers replies[1].
    reply, marker = ask(
        live, tenant, f'[[tool=no_such_tool:{{"x": 1}}]] [[replies=unused||{json.dumps(ADA)}]]', PERSON_FORMAT,
    )

    assert json.loads(reply.choices[0].message.content) == ADA
    assert len(model_requests(fake_requests, marker)) == 2
    run = Run.objects.get(session__tenant=tenant.tenant)
    assert REPAIR_PARAM not in run.params
    assert not Message.objects.filter(session__tenant=tenant.tenant, content__0__text__startswith="Your reply").exists()


@pytest.mark.parametrize(
    "response_format, mentions",
    [
        ({"type": "xml"}, "response_format.type must be one of text, json_object, json_schema"),
        ({"type": "json_schema", "json_schema": {"name": "person", "schema": [PERSON]}},
         "response_format.json_schema.schema must be a JSON object"),
        ({"type": "json_schema", "json_schema": {"name": "person", "schema": {"type": "objekt"}}},
         "response_format.json_schema.schema is not a valid JSON Schema"),
        ({"type": "json_schema", "json_schema": {"schema": PERSON}}, "response_format.json_schema.name is required"),
    ],
)
def test_malformed_response_format_is_400_naming_the_param(live, tenant, response_format, mentions):
    with pytest.raises(openai.BadRequestError) as caught:
        ask(live, tenant, "hi", response_format)
    assert caught.value.param == "response_format"
    assert mentions in caught.value.message
    assert not Run.objects.filter(tenant=tenant.tenant).exists()


def test_text_format_is_plain_text(live, tenant, fake_requests):
    reply, marker = ask(live, tenant, "plain words", {"type": "text"})
    assert reply.choices[0].message.content == f"Echo: {marker} plain words"
    assert "JSON" not in (model_requests(fake_requests, marker)[0].get("system") or "")


# --- response_format_parse on its own ------------------------------------------------------------------


def refusal(value, param="response_format") -> str:
    with pytest.raises(InvalidInput) as caught:
        response_format_parse(value, param=param)
    assert caught.value.field == param
    return caught.value.message


def test_parse_accepts_both_apis_shapes():
    assert response_format_parse(None) is None
    assert response_format_parse({"type": "text"}) is None
    assert response_format_parse({"type": "json_object"}) == {"type": "json_object"}
    expected = {"type": "json_schema", "name": "person", "schema": PERSON, "strict": True}
    assert response_format_parse(PERSON_FORMAT) == expected
    flat = {"type": "json_schema", "name": "person", "schema": PERSON, "strict": True}
    assert response_format_parse(flat, param="text.format") == expected
    described = {"type": "json_schema", "json_schema": {"name": "p", "schema": {}, "description": "A person."}}
    assert response_format_parse(described) == {
        "type": "json_schema", "name": "p", "schema": {}, "strict": False, "description": "A person.",
    }


def test_parse_refuses_what_it_cannot_honour():
    assert "must be an object" in refusal("json_object")
    assert "(it is missing)" in refusal({})
    assert 'unknown field(s) "extra"' in refusal({"type": "json_object", "extra": True})
    assert 'unknown field(s) "foo"' in refusal({"type": "json_schema", "json_schema": {"name": "p", "schema": {}, "foo": 1}})
    assert "needs a name and a schema" in refusal({"type": "json_schema"})
    assert "text.format.schema is required" in refusal({"type": "json_schema", "name": "p"}, param="text.format")
    assert "name is required" in refusal({"type": "json_schema", "json_schema": {"name": "has space", "schema": {}}})
    assert "strict must be a boolean" in refusal({"type": "json_schema", "json_schema": {"name": "p", "schema": {}, "strict": "yes"}})
    assert "not a JSON Schema draft this gateway knows" in refusal(
        {"type": "json_schema", "json_schema": {"name": "p", "schema": {"$schema": "https://example.com/mine"}}})


def test_parse_refuses_references_outside_the_schema():
    local = {"$defs": {"item": {"type": "string"}}, "type": "array", "items": {"$ref": "#/$defs/item"}}
    assert response_format_parse({"type": "json_schema", "name": "items", "schema": local}, param="text.format")
    dangling = {"type": "array", "items": {"$ref": "#/$defs/missing"}}
    remote = {"type": "array", "items": {"$ref": "https://example.com/item.json"}}
    for schema in (dangling, remote):
        message = refusal({"type": "json_schema", "json_schema": {"name": "items", "schema": schema}})
        assert "does not resolve within the schema" in message


def test_parse_caps_the_schemas_size_and_depth():
    big = {"type": "object", "properties": {f"field_{i}": {"type": "string", "description": "x" * 100} for i in range(1000)}}
    assert "characters as JSON" in refusal({"type": "json_schema", "json_schema": {"name": "big", "schema": big}})
    deep: dict = {"type": "object"}
    for _ in range(40):
        deep = {"type": "object", "properties": {"inner": deep}}
    assert "nests deeper than" in refusal({"type": "json_schema", "json_schema": {"name": "deep", "schema": deep}})


def test_a_pattern_that_backtracks_forever_in_python_is_checked_at_once():
    """A tenant writes both the schema and, through its prompt, the reply: a pattern with nested
    quantifiers must not let it hold a worker (Python's `re` would take ages on this reply)."""
    response_format = response_format_parse({"type": "json_schema", "json_schema": {"name": "evil", "schema": {
        "type": "object", "properties": {"x": {"type": "string", "pattern": "^(a+)+$"}},
        "patternProperties": {"^(b+)+$": {"type": "integer"}}, "additionalProperties": False,
    }}})
    reply = json.dumps({"x": "a" * 60 + "!", "b" * 60 + "!": 1})
    check = reply_check(response_format, Completion(content=[{"type": "text", "text": reply}], stop_reason="end_turn",
                                                    model="m"))
    assert not check.valid and "does not match" in check.problem
