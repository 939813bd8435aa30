"""The webhook channel end to end on the real gateway and worker: a signed POST to /hooks/<account id> runs the
agent (the fake model echoes "Echo: <text>"), and the reply is POSTed, signed the same way, to the account's
callback URL, a local receiver. Refusals: every failure to prove who is asking reads the same 401 and runs
nothing; a replayed delivery starts nothing.

The receiver (tests/conftest.py's callback_receiver) listens on WEBHOOK_HOST, the one loopback address the
workers of a test session may reach (BEAMCLAW_OUTBOUND_ALLOW_CIDRS, set in tests/conftest.py before any
process starts). The test process checks the callback URL when the account is saved, so it is allowed
there through the `settings` fixture.
"""

import hashlib
import hmac
import json
import time
import uuid

import httpx
import pytest

from channels_app.accounts import channel_account_create
from channels_app.inbound import PlatformMessage, channel_session_key, platform_message_receive
from channels_app.models import ChannelAccount, ChannelReply
from channels_app.webhook_inbound import MAX_BODY_BYTES, UNAUTHORIZED
from sessions.models import AgentSession, Run, ToolCall
from tests.conftest import WEBHOOK_HOST, wait_until


def sign(secret: str, timestamp: str, raw: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + raw, hashlib.sha256).hexdigest()


@pytest.fixture
def account_of(settings, callback_receiver):
    settings.BEAMCLAW_OUTBOUND = {"ALLOW_CIDRS": [f"{WEBHOOK_HOST}/32"]}

    def make(bundle, *, callback: bool = True, **fields) -> ChannelAccount:
        return channel_account_create(
            tenant=bundle.tenant, kind="webhook", name=f"hook-{uuid.uuid4().hex[:6]}", agent=bundle.agent,
            config={"callback_url": callback_receiver.url} if callback else {}, **fields,
        )

    return make


def post(live, account_id, body, *, secret: str, timestamp: str | None = None, signature: str | None = None,
         headers: dict | None = None) -> httpx.Response:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    timestamp = str(int(time.time())) if timestamp is None else timestamp
    sent = {
        "Content-Type": "application/json",
        "X-BeamClaw-Timestamp": timestamp,
        "X-BeamClaw-Signature": signature or sign(secret, timestamp, raw),
        **(headers or {}),
    }
    return httpx.post(f"{live}/hooks/{account_id}", content=raw, headers=sent, timeout=20)


def replies(callback_receiver, count: int, timeout: float = 30) -> list[dict]:
    return wait_until(lambda: callback_receiver.hits if len(callback_receiver.hits) >= count else None, timeout=timeout,
                      message=f"{count} request(s) at the callback")


def test_a_signed_message_runs_the_agent_and_its_signed_reply_reaches_the_callback(live, tenant, account_of, callback_receiver):
    account = account_of(tenant)
    body = {"id": "d-1", "text": "hello over the hook", "peer": "dm:42", "sender": "user-7"}
    sent_at = time.time()
    response = post(live, account.pk, body, secret=account.secret)
    assert response.status_code == 202, response.text
    started = response.json()
    assert set(started) == {"run_id", "session", "duplicate"} and started["duplicate"] is False
    session = AgentSession.objects.get(pk=started["session"])
    assert session.key == "agent:assistant:webhook:dm:42", "a scoped peer stays readable in the key"
    run = Run.objects.get(pk=started["run_id"])
    assert run.trigger == Run.Trigger.CHANNEL and run.params["queue_mode"] == "followup"
    assert run.params["channel"] == {"kind": "webhook", "peer": "dm:42", "sender": "user-7", "message_id": "d-1"}

    [hit] = replies(callback_receiver, 1)
    assert hit["body"]["text"] == "Echo: hello over the hook"
    assert (hit["body"]["peer"], hit["body"]["in_reply_to"], hit["body"]["run_id"]) == ("dm:42", "d-1", started["run_id"])
    headers = hit["headers"]
    assert headers["X-BeamClaw-Delivery"] == f"reply-{run.pk}"
    timestamp = headers["X-BeamClaw-Timestamp"]
    assert abs(int(timestamp) - sent_at) < 60
    assert headers["X-BeamClaw-Signature"] == sign(account.secret, timestamp, hit["raw"]), "signed like the inbound side"
    # The callback answers before the worker records the delivery, so wait for the record.
    reply = wait_until(lambda: ChannelReply.objects.filter(run=run, status="delivered").first(), timeout=30,
                       message="the reply recorded as delivered")
    assert reply.target == {"account": account.pk, "peer": "dm:42", "in_reply_to": "d-1"}
    assert account.secret not in json.dumps(reply.target), "the secret stays with the account"

    # The same delivery again (a sender retrying after a lost answer, or someone replaying it): the first run.
    again = post(live, account.pk, body, secret=account.secret)
    assert again.status_code == 200, again.text
    assert again.json() == {**started, "duplicate": True}
    assert Run.objects.filter(session=session).count() == 1


def test_every_failure_to_prove_the_sender_reads_the_same_and_runs_nothing(live, tenant, make_tenant, account_of, callback_receiver):
    account = account_of(tenant)
    disabled = account_of(tenant, enabled=False)
    stranger = account_of(make_tenant())
    body = {"id": "d-1", "text": "let me in"}
    raw = json.dumps(body).encode()
    now = str(int(time.time()))
    missing_id = ChannelAccount.objects.order_by("-pk").values_list("pk", flat=True).first() + 1000
    refused = {
        "wrong secret": post(live, account.pk, body, secret="not-the-secret"),
        "another account's secret": post(live, account.pk, body, secret=stranger.secret),
        "body changed after signing": post(live, account.pk, raw + b" ", secret=account.secret,
                                           signature=sign(account.secret, now, raw), timestamp=now),
        "timestamp 6 minutes old": post(live, account.pk, body, secret=account.secret, timestamp=str(int(time.time()) - 360)),
        "timestamp 6 minutes ahead": post(live, account.pk, body, secret=account.secret, timestamp=str(int(time.time()) + 360)),
        "no timestamp": post(live, account.pk, body, secret=account.secret, timestamp=""),
        "garbage signature": post(live, account.pk, body, secret=account.secret, signature="sha256=zz"),
        "unknown account": post(live, missing_id, body, secret=account.secret),
        "id past the column": post(live, 10**30, body, secret=account.secret),
        "disabled account": post(live, disabled.pk, body, secret=disabled.secret),
    }
    for why, response in refused.items():
        assert response.status_code == 401, (why, response.text)
        assert response.json() == {"detail": UNAUTHORIZED, "code": "unauthorized"}, why
    assert not Run.objects.filter(tenant=tenant.tenant).exists(), "nothing ran"
    assert callback_receiver.hits == []


def test_bodies_and_methods_it_does_not_take(live, tenant, account_of):
    account = account_of(tenant)
    huge = post(live, account.pk, b"x" * (MAX_BODY_BYTES + 1), secret=account.secret)
    assert huge.status_code == 413 and huge.json()["code"] == "request_too_large"
    assert httpx.get(f"{live}/hooks/{account.pk}").status_code == 405

    not_json = post(live, account.pk, b"{nope", secret=account.secret)
    assert not_json.status_code == 400 and "not valid JSON" in not_json.json()["detail"]
    for body, field in [
        ({"text": "no id"}, "id"),
        ({"id": "d-1"}, "text"),
        ({"id": "d-1", "text": "both", "content": [{"type": "text", "text": "x"}]}, "text"),
        ({"id": "d-1", "text": "hi", "channel": "x"}, "channel"),
        ({"id": "d-1", "text": ""}, "content"),
    ]:
        response = post(live, account.pk, body, secret=account.secret)
        assert response.status_code == 400 and field in response.json(), (body, response.text)
    # A JSON body with a NUL is refused at the door (RejectNulMiddleware); one sent as another type here.
    nul = post(live, account.pk, {"id": "d-1", "text": "nul \u0000 here"}, secret=account.secret,
               headers={"Content-Type": "text/plain"})
    assert nul.status_code == 400 and "NUL" in nul.json()["detail"], nul.text

    inbound_only = account_of(tenant, callback=False)
    refused = post(live, inbound_only.pk, {"id": "d-1", "text": "hi"}, secret=inbound_only.secret)
    assert refused.status_code == 400 and refused.json()["code"] == "no_callback_url"
    assert "callback_url" in refused.json()["detail"]
    assert not Run.objects.filter(tenant=tenant.tenant).exists()


def test_content_parts_and_the_default_peer(live, tenant, account_of, callback_receiver):
    account = account_of(tenant)
    response = post(live, account.pk, {"id": 7, "content": [{"type": "text", "text": "parts"}]}, secret=account.secret)
    assert response.status_code == 202, response.text
    assert AgentSession.objects.get(pk=response.json()["session"]).key == "agent:assistant:webhook:default"
    by_sender = post(live, account.pk, {"id": "8", "text": "mine", "sender": "alice"}, secret=account.secret)
    assert AgentSession.objects.get(pk=by_sender.json()["session"]).key == "agent:assistant:webhook:alice"
    assert sorted(hit["body"]["text"] for hit in replies(callback_receiver, 2)) == ["Echo: mine", "Echo: parts"]


def test_scoped_peers_stay_readable_and_message_ids_with_colons_never_collide(tenant):
    assert channel_session_key(kind="webhook", peer="dm:123") == "webhook:dm:123"
    assert channel_session_key(kind="webhook", peer="Dm:123").startswith("webhook:~"), "a scope word is lowercase"
    assert channel_session_key(kind="webhook", peer="dm:~abc").startswith("webhook:~")
    assert channel_session_key(kind="webhook", peer="a:b:c").startswith("webhook:~")

    def receive(peer, message_id):
        return platform_message_receive(message=PlatformMessage(
            tenant=tenant.tenant, agent=tenant.agent, kind="webhook", peer=peer, sender="s", content="hi",
            message_id=message_id,
        ))

    # Without the digest both would claim "<agent>:webhook:dm:123:x".
    first, second = receive("dm", "123:x"), receive("dm:123", "x")
    assert not first.duplicate and not second.duplicate and first.run.pk != second.run.pk
    assert receive("dm", "123:x").duplicate


def test_the_message_tool_sends_through_a_channel_of_the_agents_tenant(live, tenant, make_tenant, account_of, callback_receiver):
    account = account_of(tenant)
    stranger = account_of(make_tenant())
    call = {"channel": account.name, "to": "ops-room", "text": "deploy finished"}
    response = post(live, account.pk, {"id": "t-1", "text": f"[[tool=message:{json.dumps(call)}]] tell them"},
                    secret=account.secret)
    assert response.status_code == 202, response.text
    hits = replies(callback_receiver, 2)
    sent, reply = hits[0]["body"], hits[1]["body"]
    tool_call = ToolCall.objects.get(run_id=response.json()["run_id"], name="message")
    assert (sent["text"], sent["to"], sent["kind"], sent["agent"]) == ("deploy finished", "ops-room", "message", "assistant")
    assert hits[0]["headers"]["X-BeamClaw-Delivery"] == f"tool-{tool_call.pk}"
    assert hits[0]["headers"]["X-BeamClaw-Signature"] == sign(account.secret, hits[0]["headers"]["X-BeamClaw-Timestamp"], hits[0]["raw"])
    assert "Delivered through" in reply["text"] and reply["in_reply_to"] == "t-1"

    with httpx.Client(base_url=f"{live}/api", headers=tenant.headers, timeout=30) as api:
        theirs = api.post("/tools/invoke", json={"agent": "assistant", "tool": "message",
                                                 "input": {"channel": stranger.pk, "to": "x", "text": "hi"}})
        assert theirs.status_code == 200, theirs.text
        assert theirs.json()["ok"] is False and f"No enabled channel '{stranger.pk}'" in theirs.json()["error"]
        assert stranger.name not in theirs.json()["error"], "another tenant's channels are not listed"
    assert len(callback_receiver.hits) == 2
