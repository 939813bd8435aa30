"""What needs no worker: the transport interface, the inbound checks, the sweeper of unheard run ends."""

from datetime import timedelta

import pytest
from django.utils import timezone

from beamclaw_project.errors import InvalidInput
from channels_app.inbound import PlatformMessage, channel_session_key, platform_message_receive
from channels_app.models import ChannelReply
from channels_app.services import SWEEP_SLACK, channel_reply_release, channel_reply_sweep
from channels_app.transport import (
    MAX_RETRY_AFTER_SECONDS,
    TransientDeliveryError,
    UnknownTransport,
    register_transport,
    retry_countdown,
    transport_for,
)
from channels_app.transports.webhook import WebhookTransport
from sessions.models import AgentSession, Run


def test_the_webhook_is_built_in_and_an_unknown_kind_names_the_setting():
    assert isinstance(transport_for("webhook"), WebhookTransport)
    with pytest.raises(UnknownTransport, match="'smoke-signals'.*BEAMCLAW_PLUGINS"):
        transport_for("smoke-signals")


@pytest.mark.parametrize("kind", ["", "Discord", "a:b", "x" * 25, "9lives"])
def test_a_kind_is_a_short_plain_name(kind):
    with pytest.raises(ValueError, match="transport kind"):
        register_transport(kind, WebhookTransport())


def test_retries_back_off_exponentially_unless_the_platform_asks_for_longer():
    busy = TransientDeliveryError("HTTP 503")
    assert [retry_countdown(retries=n, base_seconds=1.0, error=busy) for n in range(4)] == [1.0, 2.0, 4.0, 8.0]
    slow_down = TransientDeliveryError("HTTP 429", retry_after=30)
    assert retry_countdown(retries=0, base_seconds=1.0, error=slow_down) == 30
    assert retry_countdown(retries=6, base_seconds=1.0, error=slow_down) == 64, "the backoff when it is longer"
    greedy = TransientDeliveryError("HTTP 429", retry_after=86400)
    assert retry_countdown(retries=0, base_seconds=1.0, error=greedy) == MAX_RETRY_AFTER_SECONDS


def test_a_peer_that_cannot_stand_in_a_key_is_replaced_by_a_stable_digest():
    assert channel_session_key(kind="discord", peer="1187203455121") == "discord:1187203455121"
    odd = channel_session_key(kind="discord", peer="guild:1:thread:2")
    assert odd.startswith("discord:~") and odd == channel_session_key(kind="discord", peer="guild:1:thread:2")
    assert len(channel_session_key(kind="webhook", peer="p" * 1000)) < 64
    assert channel_session_key(kind="webhook", peer="~abc") != "webhook:~abc", "digests and plain peers never meet"


def test_messages_that_cannot_be_answered_are_refused_before_anything_is_written(make_tenant):
    bundle, stranger = make_tenant(), make_tenant()

    def receive(**changes):
        fields = dict(tenant=bundle.tenant, agent=bundle.agent, kind="webhook", peer="p-1", sender="s", content="hi",
                      message_id="m-1")
        return platform_message_receive(message=PlatformMessage(**{**fields, **changes}))

    with pytest.raises(UnknownTransport):
        receive(kind="smoke-signals")
    with pytest.raises(InvalidInput, match="is not tenant"):
        receive(agent=stranger.agent)
    with pytest.raises(InvalidInput, match="its own id"):
        receive(message_id="")
    with pytest.raises(InvalidInput):
        receive(content="   ")
    assert not AgentSession.objects.filter(tenant=bundle.tenant).exists()


def test_a_reply_whose_run_end_was_not_heard_is_released_once_by_the_sweeper(tenant):
    session = AgentSession.objects.create(tenant=tenant.tenant, agent=tenant.agent, key="agent:assistant:memory:p")
    ended = timezone.now()
    run = Run.objects.create(tenant=tenant.tenant, session=session, input=[], trigger=Run.Trigger.CHANNEL,
                             status=Run.Status.SUCCEEDED, finished_at=ended)
    reply = ChannelReply.objects.create(tenant=tenant.tenant, run=run, kind="memory", target={"peer": "p"})
    assert reply.pk not in channel_reply_sweep(now=ended + SWEEP_SLACK / 2).released, "its signal may still be on its way"
    assert reply.pk in channel_reply_sweep(now=ended + SWEEP_SLACK + timedelta(seconds=1)).released
    assert ChannelReply.objects.get(pk=reply.pk).status in ("pending", "skipped")  # (a worker may have taken it)
    assert channel_reply_release(run_id=run.pk) is None, "a late signal does not start a second delivery"
    # Released once. (Sent again it may be: a worker of an earlier test may be finishing its delivery, and
    # that second attempt is a no-op.)
    assert reply.pk not in channel_reply_sweep(now=ended + SWEEP_SLACK * 3).released
