"""Sending the replies channel conversations are owed (channels_app/models.py: ChannelReply).

When a run ends, its reply goes from `waiting` to `pending` in one conditional UPDATE, and only the caller
that moved it enqueues `channels.deliver_reply`: the run_finished receiver (channels_app/receivers.py) or,
for a signal lost with its process, the sweeper (a housekeeping chore). So one reply has one delivery
chain, however often its end is noticed; a chain lost with its worker or with Redis is found by its
missing lease and started again by the sweeper (beamclaw_project/infra/deliveries.py). Each attempt goes through the channel's transport and is
recorded; a transient error is retried by the task with backoff, a permanent one (or the last attempt's)
ends the delivery as failed. Delivery is at least once (a worker may die after the platform took the
message and before the record says so); the delivery id `reply-<run id>` lets the platform side drop the
repeat."""

import logging
from datetime import timedelta
from typing import NamedTuple

from django.conf import settings
from django.utils import timezone

from beamclaw_project.infra.deliveries import deliveries_unleased, delivery_send
from beamclaw_project.infra.log_context import log_context_bind
from beamclaw_project.infra.metrics import channel_message_record
from beamclaw_project.infra.queues import SYSTEM_QUEUE
from channels_app.models import ChannelReply
from channels_app.transport import DeliveryError, OutboundMessage, PermanentDeliveryError, UnknownTransport, transport_for
from sessions.models import Message, Run

logger = logging.getLogger(__name__)

# A chat user gets this rather than silence when the run failed before it answered; the run's own error
# is for the tenant (it may name the provider, the key, a limit), not for whoever wrote on the platform.
FAILED_REPLY = "Sorry, I could not answer that: something went wrong on my side."
# The run_finished signal is sent right after the run's commit; a reply still waiting this long after its
# run ended lost its signal with its process.
SWEEP_SLACK = timedelta(seconds=30)
DELIVER_TASK = "channels.deliver_reply"
DELIVERY_KIND = "channel-reply"


def channel_reply_release(*, run_id) -> int | None:
    """The run ended: its reply, if it owes one that nobody released yet, is now pending. Returns the reply's
    id to the one caller that released it, which enqueues its delivery."""
    reply_id = ChannelReply.objects.filter(run_id=run_id, status=ChannelReply.Status.WAITING).values_list("pk", flat=True).first()
    if reply_id is None:
        return None
    released = ChannelReply.objects.filter(pk=reply_id, status=ChannelReply.Status.WAITING).update(
        status=ChannelReply.Status.PENDING
    )
    return reply_id if released else None


def _reply_text(run: Run) -> str:
    reply = Message.objects.filter(run=run, role=Message.Role.ASSISTANT).order_by("-seq").first()
    text = reply.text if reply is not None else ""
    if not text and run.status == Run.Status.FAILED:
        return FAILED_REPLY
    return text


def channel_reply_send(reply_id: int, *, only_if_free: bool = False) -> bool:
    """Start (or, for a sweeper, restart) a pending reply's chain of delivery attempts."""
    return delivery_send(DELIVER_TASK, DELIVERY_KIND, reply_id, queue=SYSTEM_QUEUE, only_if_free=only_if_free)


def channel_reply_deliver(*, reply_id: int) -> None:
    """One attempt to send a pending reply. Raises the transport's TransientDeliveryError when it should be
    retried (and this was not the last of DELIVERY_ATTEMPTS)."""
    reply = ChannelReply.objects.select_related("run", "tenant").filter(pk=reply_id, status=ChannelReply.Status.PENDING).first()
    if reply is None:
        return
    final_attempt = reply.attempts + 1 >= settings.BEAMCLAW_CHANNELS["DELIVERY_ATTEMPTS"]
    run = reply.run
    # The task came from the system queue, which names no tenant.
    log_context_bind(tenant=reply.tenant.slug, session=run.session_id, run=run.pk)
    text = _reply_text(run)
    if not text:
        # Merged into another run (queue mode `steer`), superseded or aborted: that run or nobody answers.
        ChannelReply.objects.filter(pk=reply.pk, status=ChannelReply.Status.PENDING).update(
            status=ChannelReply.Status.SKIPPED, error=f"the run ended {run.status} without a reply"
        )
        return
    message = OutboundMessage(
        delivery_id=f"reply-{run.pk}", target=reply.target, text=text,
        data={"kind": reply.kind, "run_id": str(run.pk), "session_id": str(run.session_id), "status": run.status,
              "peer": reply.target.get("peer"), "in_reply_to": reply.target.get("in_reply_to")},
    )
    error: DeliveryError | None = None
    receipt = None
    try:
        receipt = transport_for(reply.kind).send(message)
    except DeliveryError as exc:
        error = exc
    except UnknownTransport as exc:
        error = PermanentDeliveryError(str(exc))
    except Exception:  # noqa: BLE001 - a transport that breaks its contract fails the reply rather than strand it
        logger.exception("channel reply %s: the %s transport raised outside its contract", reply.pk, reply.kind)
        error = PermanentDeliveryError(f"the {reply.kind} transport failed unexpectedly (see the worker log)")
    if error is not None:
        logger.warning("channel reply %s (%s) attempt %s: %s", reply.pk, reply.kind, reply.attempts + 1, error.message)
    retry = error is not None and error.transient and not final_attempt
    updates = {"attempts": reply.attempts + 1, "error": error.message if error else ""}
    if error is None:
        updates.update(status=ChannelReply.Status.DELIVERED, delivered_at=timezone.now(), remote_id=receipt.remote_id)
        channel_message_record(kind=reply.kind, direction="out")
    elif not retry:
        updates.update(status=ChannelReply.Status.FAILED)
    ChannelReply.objects.filter(pk=reply.pk, status=ChannelReply.Status.PENDING).update(**updates)
    if retry:
        raise error


class ReplySweep(NamedTuple):
    released: list[int]  # replies whose run's end was not heard, released and sent
    resent: list[int]  # pending replies whose chain of attempts was lost, sent again


def channel_reply_sweep(*, now=None) -> ReplySweep:
    """Release and send the replies whose run ended but whose run_finished was not heard, and send again
    the pending ones whose chain of attempts was lost (its worker or Redis went away). A reply a worker is
    finishing as this looks may be sent again too; its second attempt finds it no longer pending."""
    cutoff = (now or timezone.now()) - SWEEP_SLACK
    stranded = ChannelReply.objects.filter(
        status=ChannelReply.Status.WAITING, run__status__in=Run.TERMINAL_STATUSES, run__finished_at__lt=cutoff
    ).values_list("run_id", flat=True)[:500]
    released = [reply_id for run_id in stranded if (reply_id := channel_reply_release(run_id=run_id)) is not None]
    for reply_id in released:
        channel_reply_send(reply_id)
    pending = list(
        ChannelReply.objects.filter(status=ChannelReply.Status.PENDING, run__finished_at__lt=cutoff)
        .exclude(pk__in=released).values_list("pk", flat=True)[:500]
    )
    resent = [pk for pk in deliveries_unleased(DELIVERY_KIND, pending) if channel_reply_send(pk, only_if_free=True)]
    if released or resent:
        logger.info("channel replies: released %s whose run's end was not heard, sent %s again whose delivery was "
                    "lost", len(released), len(resent))
    return ReplySweep(released, resent)
