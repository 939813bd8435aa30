"""A chat channel end to end, on a platform that is only a Redis list (tests/channels/memory_channel.py):
a platform message becomes a run in its conversation's session on the real worker (against the fake
model), the reply goes back through the channel's transport once, and a redelivered message starts nothing.
Delivery retries keep the production backoff (BEAMCLAW_CHANNEL_DELIVERY_RETRY_BASE_SECONDS, 1 s)."""

import uuid

from channels_app.inbound import PlatformMessage, platform_message_receive
from channels_app.models import ChannelReply
from channels_app.services import FAILED_REPLY
from sessions.models import Message, Run
from tests.channels import memory_channel
from tests.conftest import wait_until

PLUGINS = ["tests.channels.memory_channel"]


def push(bundle, text: str, *, peer: str, message_id: str, script: str = ""):
    return platform_message_receive(message=PlatformMessage(
        tenant=bundle.tenant, agent=bundle.agent, kind=memory_channel.KIND, peer=peer, sender="user-7",
        content=text, message_id=message_id, reply_target={"script": script} if script else {},
    ))


def settled(run, timeout: float = 30) -> ChannelReply:
    return wait_until(
        lambda: ChannelReply.objects.filter(run=run, status__in=["delivered", "failed", "skipped"]).first(),
        timeout=timeout, message=f"the reply to run {run.pk}",
    )


def new_peer() -> str:
    return f"dm-{uuid.uuid4().hex[:8]}"


def test_a_platform_message_is_answered_once_in_its_conversations_session(plugin_worker, tenant, fake_requests):
    peer = new_peer()
    first = push(tenant, "hello from the platform", peer=peer, message_id="m-1")
    assert not first.duplicate
    assert first.session.key == f"agent:assistant:memory:{peer}"
    assert first.run.trigger == Run.Trigger.CHANNEL

    reply = settled(first.run)
    assert (reply.status, reply.attempts, reply.error) == ("delivered", 1, "")
    run = Run.objects.get(pk=first.run.pk)
    assert run.status == Run.Status.SUCCEEDED
    assert any("hello from the platform" in str((r["body"] or {}).get("messages")) for r in fake_requests(50))
    [sent] = memory_channel.sent(peer)
    assert sent["text"] == "Echo: hello from the platform"
    assert sent["delivery_id"] == f"reply-{run.pk}" and reply.remote_id.startswith("memory-")
    assert sent["target"] == {"peer": peer, "in_reply_to": "m-1"}

    again = push(tenant, "hello from the platform", peer=peer, message_id="m-1")
    assert again.duplicate and again.run.pk == run.pk and again.session.pk == first.session.pk
    assert Run.objects.filter(session=first.session).count() == 1, "a redelivered message starts no run"

    # The next message of the conversation joins the same session; once its reply is out, the list holds
    # both replies and nothing else: the first went out once.
    second = push(tenant, "and again", peer=peer, message_id="m-2")
    assert second.session.pk == first.session.pk and not second.duplicate
    assert settled(second.run).status == "delivered"
    assert [s["text"] for s in memory_channel.sent(peer)] == ["Echo: hello from the platform", "Echo: and again"]
    transcript = [(m.role, m.text) for m in Message.objects.filter(session=first.session).order_by("seq")]
    assert transcript == [
        ("user", "hello from the platform"), ("assistant", "Echo: hello from the platform"),
        ("user", "and again"), ("assistant", "Echo: and again"),
    ]


def test_conversations_of_one_agent_have_sessions_of_their_own(plugin_worker, tenant):
    one, other = push(tenant, "one", peer=new_peer(), message_id="1"), push(tenant, "other", peer=new_peer(), message_id="1")
    assert one.session.pk != other.session.pk and one.run.pk != other.run.pk, "message ids are per conversation"
    assert settled(one.run).status == settled(other.run).status == "delivered"


def test_a_transient_error_is_retried_until_the_reply_is_delivered(plugin_worker, tenant):
    peer = new_peer()
    run = push(tenant, "busy platform", peer=peer, message_id="m-1", script="transient-once").run
    reply = settled(run)
    assert (reply.status, reply.attempts, reply.error) == ("delivered", 2, "")
    assert memory_channel.attempts(f"reply-{run.pk}") == 2
    assert [s["text"] for s in memory_channel.sent(peer)] == ["Echo: busy platform"]


def test_a_permanent_error_is_recorded_and_not_retried(plugin_worker, tenant):
    peer = new_peer()
    run = push(tenant, "nobody there", peer=peer, message_id="m-1", script="permanent").run
    reply = settled(run)
    assert (reply.status, reply.attempts) == ("failed", 1)
    assert reply.error == "the platform does not know this conversation"
    assert memory_channel.attempts(f"reply-{run.pk}") == 1
    assert memory_channel.sent(peer) == []


def test_a_failed_run_tells_the_conversation_without_its_error(plugin_worker, tenant):
    peer = new_peer()
    run = push(tenant, "[[status=400]] no", peer=peer, message_id="m-1").run
    assert settled(run).status == "delivered"
    failed = Run.objects.get(pk=run.pk)
    assert failed.status == Run.Status.FAILED and failed.error
    [sent] = memory_channel.sent(peer)
    assert sent["text"] == FAILED_REPLY and failed.error not in sent["text"]
