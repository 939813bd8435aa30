"""The OpenAI-compatible endpoints, driven with the official `openai` client and with raw HTTP."""

import json
import threading
import uuid

import httpx
import openai
import pytest

from sessions import events
from sessions.models import AgentSession, Message, Run
from tests.conftest import assert_whole_deltas, openai_client, wait_until


def test_models_lists_only_the_tenants_agents(live, make_tenant):
    mine, other = make_tenant(), make_tenant()
    models = openai_client(live, mine).models.list()
    assert [m.id for m in models.data] == ["assistant"]
    assert models.data[0].owned_by == mine.tenant.slug
    assert openai_client(live, mine).models.retrieve("assistant").id == "assistant"
    with pytest.raises(openai.NotFoundError):
        openai_client(live, other).models.retrieve("nope")


def test_non_streaming_completion_with_openai_client(live, tenant):
    reply = openai_client(live, tenant).chat.completions.create(
        model="assistant", messages=[{"role": "user", "content": "hello gateway"}]
    )
    assert reply.choices[0].message.content == "Echo: hello gateway"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.object == "chat.completion"
    assert reply.id.startswith("chatcmpl-")
    assert reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens == 3
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens

    # Without `user` the request formed an ephemeral session, closed once answered.
    session = AgentSession.objects.get(tenant=tenant.tenant)
    assert session.ephemeral and session.status == AgentSession.Status.CLOSED
    assert [m.role for m in session.messages.all()] == ["user", "assistant"]
    assert Run.objects.get(session=session).status == Run.Status.SUCCEEDED


def test_streaming_completion_with_openai_client(live, tenant):
    stream = openai_client(live, tenant).chat.completions.create(
        model="assistant",
        messages=[{"role": "user", "content": "one two three four [[delay_ms=5]]"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Echo: one two three four"
    assert_whole_deltas([c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content],
                        ["Echo: ", "one ", "two ", "three ", "four"])
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens == 5
    assert len({c.id for c in chunks}) == 1


def test_a_plain_completion_asks_the_model_for_its_reply_whole(live, tenant, fake_requests):
    """Nobody reads a plain completion's reply as it comes (the request waits for the run's end): its step asks
    the model for the reply whole, one read instead of one per token, and the run's stream holds it as one
    delta. A streamed completion is streamed from the model on, delta by delta."""
    client = openai_client(live, tenant)
    marker = uuid.uuid4().hex
    messages = [{"role": "user", "content": f"one two three four five six {marker} [[delay_ms=20]]"}]
    expected = f"Echo: one two three four five six {marker}"
    plain = client.chat.completions.with_raw_response.create(model="assistant", messages=messages)
    assert plain.parse().choices[0].message.content == expected
    with client.chat.completions.with_streaming_response.create(model="assistant", messages=messages,
                                                               stream=True) as streamed:
        chunks = list(streamed.parse())
        streamed_run = streamed.headers["X-Run-Id"]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected

    asked = [r["body"]["stream"] for r in fake_requests() if marker in json.dumps(r["body"])]
    assert asked == [False, True], "the plain run asked for the reply whole, the streamed one for a stream"

    def deltas(run_id) -> list[str]:
        return [e.payload["text"] for e in events.read_all(run_id) if e.event == events.TEXT_DELTA]

    assert deltas(plain.headers["X-Run-Id"]) == [expected]
    # The delta goes out with the run's end, in one round trip, and before it.
    assert [e.event for e in events.read_all(plain.headers["X-Run-Id"])] == [
        events.RUN_STARTED, events.TEXT_DELTA, events.RUN_COMPLETED]
    assert "".join(deltas(streamed_run)) == expected and len(deltas(streamed_run)) > 1


def test_a_plain_completion_aborted_while_the_model_writes_is_answered_at_once(live, tenant, fake_requests, fake_llm):
    """A reply asked for whole has no stream events between which its step could notice an abort: the
    worker cuts the model's connection when the run is aborted, rather than wait for the whole reply. The
    official client, with its default retries, gets the abort and does not send the request again (it resends
    a 409 unless told not to): a second run would undo the abort."""
    marker = uuid.uuid4().hex
    session_key = f"agent:assistant:abort-whole-{marker}"
    client = openai.OpenAI(base_url=f"{live}/v1", api_key=tenant.api_key, timeout=180,
                           default_headers={"X-Session-Key": session_key})
    # The fake holds the reply until the test releases it: the model is still writing when the run is aborted.
    messages = [{"role": "user", "content": f"{marker} [[hold={marker}:0]]"}]
    answers: list = []

    def ask():
        try:
            answers.append(client.chat.completions.create(model="assistant", messages=messages))
        except openai.APIStatusError as exc:
            answers.append(exc)

    request = threading.Thread(target=ask)
    request.start()
    try:
        wait_until(lambda: any(marker in json.dumps(r["body"]) for r in fake_requests()), timeout=30,
                   message="the model to be writing the reply")
        run = Run.objects.get(session__key=session_key)
        aborted = httpx.post(f"{live}/api/runs/{run.pk}/abort/", headers=tenant.headers, timeout=30)
        assert aborted.status_code == 200, aborted.text
        request.join(timeout=60)
        assert answers, "the request still waited for the model's reply a minute after the abort"
    finally:
        httpx.post(f"{fake_llm}/_fake/release", params={"key": marker}).raise_for_status()
        request.join()
    assert isinstance(answers[0], openai.ConflictError), answers[0]
    assert answers[0].body["code"] == "aborted" and answers[0].response.headers["X-Should-Retry"] == "false"
    assert Run.objects.filter(session__key=session_key).count() == 1, "the client sent the request again"
    run.refresh_from_db()
    assert run.status == Run.Status.ABORTED
    assert [m.role for m in Message.objects.filter(session=run.session_id)] == ["user"], "no reply was written"


def test_a_whole_reply_says_its_length_and_is_not_chunked(live, tenant):
    # A client (or a proxy in front of the gateway) knows a plain reply's size before reading it, as for
    # every other Django response; errors say theirs too.
    for body, status in (({"model": "assistant", "messages": [{"role": "user", "content": "hi"}]}, 200),
                         ({"model": "nope", "messages": [{"role": "user", "content": "hi"}]}, 404)):
        response = httpx.post(f"{live}/v1/chat/completions", headers=tenant.headers, json=body, timeout=30)
        assert response.status_code == status, response.text
        assert "transfer-encoding" not in response.headers
        assert int(response.headers["content-length"]) == len(response.content)


def test_stream_wire_format_ends_with_done(live, tenant):
    with httpx.stream(
        "POST", f"{live}/v1/chat/completions", headers=tenant.headers, timeout=30,
        json={"model": "assistant", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        assert "content-length" not in response.headers  # (a stream's length is not known ahead)
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in lines)


def test_user_field_keeps_a_persistent_session(live, tenant, fake_requests):
    client = openai_client(live, tenant)
    first = client.chat.completions.create(model="assistant", user="alice", messages=[{"role": "user", "content": "first"}])
    second = client.chat.completions.create(model="assistant", user="alice", messages=[{"role": "user", "content": "second"}])
    assert first.choices[0].message.content == "Echo: first"
    assert second.choices[0].message.content == "Echo: second"

    session = AgentSession.objects.get(tenant=tenant.tenant, key="agent:assistant:alice")
    assert not session.ephemeral
    transcript = [(m.role, m.text) for m in session.messages.order_by("seq")]
    assert transcript == [("user", "first"), ("assistant", "Echo: first"), ("user", "second"), ("assistant", "Echo: second")]
    # The model saw the whole conversation, kept by the server, on the second turn.
    sent = fake_requests(1)[0]["body"]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]


def test_session_key_header_selects_the_session(live, tenant):
    headers = {**tenant.headers, "X-Session-Key": "agent:assistant:support"}
    for text in ("a", "b"):
        response = httpx.post(
            f"{live}/v1/chat/completions", headers=headers, timeout=30,
            json={"model": "assistant", "messages": [{"role": "user", "content": text}]},
        )
        assert response.status_code == 200, response.text
    session = AgentSession.objects.get(tenant=tenant.tenant, key="agent:assistant:support")
    assert session.messages.count() == 4


def test_ephemeral_request_history_and_system_prompt_reach_the_model(live, make_tenant, fake_requests):
    bundle = make_tenant(system_prompt="You are the test agent.", max_tokens=1000)
    openai_client(live, bundle).chat.completions.create(
        model="assistant",
        max_tokens=50,
        messages=[
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "earlier question"},
            {"role": "assistant", "content": "earlier answer"},
            {"role": "user", "content": [{"type": "text", "text": "now this"}]},
        ],
    )
    body = fake_requests(1)[0]["body"]
    assert body["system"] == "You are the test agent.\n\nAnswer briefly."
    assert body["max_tokens"] == 50
    assert body["model"] == bundle.agent.model
    assert [(m["role"], m["content"][0]["text"]) for m in body["messages"]] == [
        ("user", "earlier question"), ("assistant", "earlier answer"), ("user", "now this"),
    ]


@pytest.mark.parametrize("history_chars", [300, 90_000], ids=["sent-with-the-step", "read-by-the-step"])
def test_a_request_s_history_is_the_session_s_transcript_in_order(live, tenant, fake_requests, history_chars):
    # The earlier messages are written with the session and the run, in the commit's round trip. A small
    # request's step 0 takes them from its message; a long one's (over the header's size) reads them back.
    turns = [("user" if n % 2 == 0 else "assistant", f"turn {n}: " + "x" * (history_chars // 6)) for n in range(6)]
    completion = openai_client(live, tenant).chat.completions.with_raw_response.create(
        model="assistant", messages=[*({"role": r, "content": t} for r, t in turns), {"role": "user", "content": "and now?"}],
    )
    assert completion.parse().choices[0].message.content == "Echo: and now?"
    sent = fake_requests(1)[-1]["body"]["messages"]
    assert [(m["role"], m["content"][0]["text"]) for m in sent] == [*turns, ("user", "and now?")]
    run = Run.objects.get(pk=completion.headers["x-run-id"])
    stored = [(m.seq, m.role, m.content[0]["text"]) for m in Message.objects.filter(session=run.session_id).order_by("seq")]
    assert stored == [(n, r, t) for n, (r, t) in enumerate([*turns, ("user", "and now?"), ("assistant", "Echo: and now?")], 1)]
    assert AgentSession.objects.get(pk=run.session_id).next_seq == len(stored) + 1
