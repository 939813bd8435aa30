"""Sending a message through a channel account on the gateway's own initiative (a cron job's delivery, an
agent's `message` tool), as opposed to the reply a conversation is owed (channels_app/services.py).

One attempt per call, like the transports (channels_app/transport.py): the caller decides whether and when
to try again, under the same `delivery_id`, which the transport passes on so a receiver can drop a repeat.
The target is `{"account": <id>, "to": <where on the platform>}`, the shape every account-backed transport
takes; the transport reads the account's credentials itself at send time, so they are never copied into a
target that someone can read back.
"""

from beamclaw_project.infra.metrics import channel_message_record
from channels_app.models import ChannelAccount
from channels_app.transport import DeliveryReceipt, OutboundMessage, PermanentDeliveryError, UnknownTransport, transport_for

MAX_TO_LENGTH = 200


def channel_message_send(*, account: ChannelAccount, to: str, text: str, delivery_id: str, data: dict | None = None,
                         timeout_seconds: float | None = None) -> DeliveryReceipt:
    """Put `text` on the account's platform at `to` (a Discord channel or user id; for a webhook account a
    free-form recipient the receiver interprets, sent as the body's `to`). `data` is extra structured context
    for transports that carry it (the webhook's JSON body). Raises TransientDeliveryError (worth trying again
    later) or PermanentDeliveryError (a disabled account, a kind no transport in this process serves, a
    target the platform or the address policy refuses)."""
    if not account.enabled:
        raise PermanentDeliveryError(f"channel '{account.name}' is disabled; enable it to send through it")
    if not isinstance(to, str) or not to.strip() or len(to) > MAX_TO_LENGTH:
        raise PermanentDeliveryError(f"'to' must be a recipient id of at most {MAX_TO_LENGTH} characters")
    if not isinstance(text, str) or not text.strip():
        raise PermanentDeliveryError("there is no text to send")
    try:
        transport = transport_for(account.kind)
    except UnknownTransport as exc:
        raise PermanentDeliveryError(str(exc)) from None
    receipt = transport.send(OutboundMessage(
        delivery_id=delivery_id, target={"account": account.pk, "to": to.strip()}, text=text, data=dict(data or {}),
        timeout_seconds=timeout_seconds,
    ))
    channel_message_record(kind=account.kind, direction="out")
    return receipt
