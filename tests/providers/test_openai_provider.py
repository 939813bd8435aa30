"""An agent on the OpenAI-compatible provider (`provider: "openai"`), driven through the real worker against
the fake Chat Completions server (tests/fakes/openai_server.py) with the official SDKs on both sides."""

import json
import uuid

import httpx
import pytest

from sessions.models import AgentSession, Message, Run, ToolCall
from tests.conftest import WEBHOOK_HOST, openai_client
from tests.sessions.test_rest_api import wait_for_run

requires_bwrap = pytest.mark.skipif(
    __import__("shutil").which("bwrap", path="/usr/local/bin:/usr/bin:/bin") is None, reason="bubblewrap is not installed"
)


def sent_with(requests, marker: str) -> list[dict]:
    """The recorded requests whose conversation contains `marker`, oldest first."""
    return [r for r in requests(200) if marker in json.dumps((r["body"] or {}).get("messages"))]


def ask(live: str, bundle, text: str, agent: str = "assistant") -> dict:
    """Send `text` as a new message through the REST API and wait for the run; the finished run."""
    with httpx.Client(base_url=f"{live}/api", headers=bundle.headers, timeout=30) as api:
        session_id = api.post("/sessions/", json={"agent": agent, "key": f"s-{uuid.uuid4().hex[:8]}"}).json()["id"]
        run = api.post(f"/sessions/{session_id}/messages/", json={"content": text}).json()["run"]
        return wait_for_run(api, run["id"])


def openai_agent(make_tenant, **fields):
    return make_tenant(provider="openai", model="fake-model", **fields)


def test_a_chat_streams_through_the_openai_provider(live, make_tenant, openai_requests, fake_requests):
    bundle = openai_agent(make_tenant, system_prompt="You are terse.")
    stream = openai_client(live, bundle).chat.completions.create(
        model="assistant", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "system", "content": "Answer in English."}, {"role": "user", "content": "hello openai one"}],
    )
    chunks = list(stream)
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(deltas) == "Echo: hello openai one" and len(deltas) > 1, "streamed in pieces"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert [c.usage for c in chunks if c.usage][-1].completion_tokens > 0

    [sent] = sent_with(openai_requests, "hello openai one")
    body = sent["body"]
    assert body["model"] == "fake-model" and body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["messages"] == [
        {"role": "system", "content": "You are terse.\n\nAnswer in English."},
        {"role": "user", "content": "hello openai one"},
    ]
    assert sent["headers"]["authorization"] == "Bearer test-openai-key", "the deployment's OPENAI_API_KEY"
    assert not sent_with(fake_requests, "hello openai one"), "nothing went to Anthropic"
    run = Run.objects.filter(tenant=bundle.tenant).get()
    assert run.status == Run.Status.SUCCEEDED and run.input_tokens > 0 and run.output_tokens > 0


def test_a_server_that_sends_no_usage_still_answers(live, make_tenant):
    finished = ask(live, openai_agent(make_tenant), "no usage here [[usage=off]]")
    assert finished["status"] == "succeeded", finished
    run = Run.objects.get(pk=finished["id"])
    assert (run.input_tokens, run.output_tokens) == (0, 0)
    assert Message.objects.filter(session=run.session, role="assistant").get().text == "Echo: no usage here"


@requires_bwrap
def test_the_agent_uses_a_tool_across_two_steps(live, make_tenant, openai_requests):
    bundle = openai_agent(make_tenant)
    command = {"command": "echo from-openai-tool"}
    finished = ask(live, bundle, f"use the shell [[tool=exec:{json.dumps(command)}]]")
    assert finished["status"] == "succeeded", finished
    run = Run.objects.get(pk=finished["id"])
    call = ToolCall.objects.get(run=run)
    assert (call.name, call.input, call.status) == ("exec", command, "succeeded")
    transcript = [(m.role, [b["type"] for b in m.content]) for m in Message.objects.filter(session=run.session).order_by("seq")]
    assert transcript == [("user", ["text"]), ("assistant", ["tool_use"]), ("user", ["tool_result"]), ("assistant", ["text"])]
    assert Message.objects.filter(session=run.session, role="assistant").order_by("-seq").first().text == (
        "Tool results: from-openai-tool\n\n[exit code 0]"
    )

    first, second = [r["body"] for r in sent_with(openai_requests, "use the shell")]
    exec_tool = next(t for t in first["tools"] if t["function"]["name"] == "exec")
    assert exec_tool["type"] == "function" and exec_tool["function"]["description"]
    assert exec_tool["function"]["parameters"]["properties"]["command"]["type"] == "string"
    assistant, tool_message = second["messages"][-2:]
    assert assistant["role"] == "assistant" and assistant["content"] is None
    assert assistant["tool_calls"] == [{"id": call.tool_use_id, "type": "function",
                                        "function": {"name": "exec", "arguments": json.dumps(command)}}]
    assert tool_message == {"role": "tool", "tool_call_id": call.tool_use_id,
                            "content": "from-openai-tool\n\n[exit code 0]"}


def test_an_agents_own_base_url_and_key_are_used(live, make_tenant, fake_openai, openai_requests):
    bundle = openai_agent(make_tenant, base_url=f"{fake_openai}/v1", api_key="tenant-own-key")
    finished = ask(live, bundle, "own endpoint please")
    assert finished["status"] == "succeeded", finished
    [sent] = sent_with(openai_requests, "own endpoint please")
    assert sent["headers"]["authorization"] == "Bearer tenant-own-key"


def test_an_agents_own_base_url_goes_without_the_deployments_key(live, make_tenant, fake_openai, openai_requests):
    finished = ask(live, openai_agent(make_tenant, base_url=f"{fake_openai}/v1"), "keyless endpoint")
    assert finished["status"] == "succeeded", finished
    [sent] = sent_with(openai_requests, "keyless endpoint")
    assert "test-openai-key" not in sent["headers"]["authorization"]


def test_a_base_url_that_turned_private_is_refused_when_called(live, make_tenant, fake_openai, openai_requests):
    """Saved through the API it was refused (test_agent_settings.py); set behind its back, or after its DNS
    changed, the call itself is refused by the address policy."""
    loopback = fake_openai.replace(WEBHOOK_HOST, "127.0.0.1")
    finished = ask(live, openai_agent(make_tenant, base_url=f"{loopback}/v1"), "sneaky loopback")
    assert finished["status"] == "failed" and finished["error_code"] == "bad_request"
    assert "base_url" in finished["error"] and "loopback" in finished["error"]
    assert not sent_with(openai_requests, "sneaky loopback")


def test_retryable_errors_are_retried_before_output(live, make_tenant, openai_requests):
    finished = ask(live, openai_agent(make_tenant), "flaky server [[fail_first=oa-flaky:2]]")
    assert finished["status"] == "succeeded", finished
    assert len(sent_with(openai_requests, "oa-flaky")) == 3


@pytest.mark.parametrize(
    "model, text, code, hint",
    [
        ("unknown-local-model", "hello", "not_found", "Set the agent's model"),
        ("fake-model", "hello [[status=401]]", "auth", "OPENAI_API_KEY"),
        ("fake-model", "hello [[status=400]]", "bad_request", "refused the request"),
    ],
)
def test_errors_say_how_to_fix_them(live, make_tenant, openai_requests, model, text, code, hint):
    marker = uuid.uuid4().hex[:8]
    finished = ask(live, make_tenant(provider="openai", model=model), f"{marker} {text}")
    assert finished["status"] == "failed" and finished["error_code"] == code
    assert hint in finished["error"]
    assert len(sent_with(openai_requests, marker)) == 1, "a permanent error is not retried"


def test_a_midstream_error_fails_the_run_without_retrying(live, make_tenant, openai_requests):
    finished = ask(live, openai_agent(make_tenant), "one two three [[midstream_error=server_error:2]]")
    assert finished["status"] == "failed" and "broke off" in finished["error"]
    assert len(sent_with(openai_requests, "midstream_error")) == 1
    assert AgentSession.objects.get(pk=Run.objects.get(pk=finished["id"]).session_id).messages.filter(role="assistant").count() == 0
