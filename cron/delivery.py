"""Where a job's final reply goes: cron's `deliver` field (its input format and how the API shows it), and
the sending, through the channel transports (channels_app/transport.py).

A delivery target is stored as one of:

- `{"kind": "webhook", "url": ..., "headers"?: {...}, "secret"?: ...}`; what a webhook target may hold, how
  it is sent and which errors are transient is the webhook transport's (channels_app/transports/webhook.py).
  The secret and credential-bearing header values are write-only: the API shows them masked, and a PUT of
  what GET showed keeps the stored values.
- `{"kind": "channel", "channel": <ChannelAccount id>, "to": "<recipient>"}`: sent through that account
  (channels_app/outbound.py). The account must be the job's tenant's, checked when the job is saved and
  again at each attempt (an account deleted since, or moved out of reach, fails the delivery for good);
  the target holds no credential, the account keeps it.

A job's delivery id is `cron-run-<id>`, the same on every retry.
"""

import re

from django.conf import settings

from channels_app.models import ChannelAccount
from channels_app.outbound import MAX_TO_LENGTH, channel_message_send
from channels_app.transport import (
    DeliveryError,
    DeliveryReceipt,
    OutboundMessage,
    PermanentDeliveryError,
    TargetInvalid,
    transport_for,
)
from channels_app.transports.webhook import NO_ANSWER

# cron's callers (and its tests) name the transport's error and its no-answer text through this module.
__all__ = [
    "NO_ANSWER", "DeliveryError", "DeliveryTargetError", "deliver_keep_masked", "deliver_parse", "deliver_public",
    "deliver_send", "webhook_send",
]


class DeliveryTargetError(ValueError):
    """A delivery target that cannot be used (400 at the API)."""


def deliver_parse(value, *, tenant=None) -> dict | None:
    """The normalized target from the API's `deliver`: null, a URL, or an object with `kind`. A channel
    target is checked against `tenant`, the job's: another tenant's account reads as no account."""
    if value in (None, "", {}):
        return None
    if isinstance(value, str):
        value = {"kind": "webhook", "url": value}
    if not isinstance(value, dict):
        raise DeliveryTargetError(
            'Give a webhook URL, {"kind": "webhook", "url": "https://…"} or {"kind": "channel", "channel": <channel id>, '
            '"to": "<recipient>"}.'
        )
    kind = value.get("kind", "webhook")
    if kind == "channel":
        return _channel_target_parse(value, tenant)
    if kind != "webhook":
        raise DeliveryTargetError(f"Delivery kind '{kind}' is not available; use 'webhook' or 'channel'.")
    try:
        target = transport_for("webhook").parse_target({k: v for k, v in value.items() if k != "kind"})
    except TargetInvalid as exc:
        raise DeliveryTargetError(exc.message) from None
    return {"kind": "webhook", **target}


def _channel_target_parse(value: dict, tenant) -> dict:
    unknown = sorted(set(value) - {"kind", "channel", "to"})
    if unknown:
        raise DeliveryTargetError(f"Unknown key(s) {', '.join(unknown)}; a channel target has channel and to.")
    channel, to = value.get("channel"), value.get("to")
    if isinstance(channel, str) and channel.strip().isdigit():
        channel = int(channel.strip())
    if not isinstance(channel, int) or isinstance(channel, bool):
        raise DeliveryTargetError("'channel' must be the id of one of your channels (GET /api/channels/ lists them).")
    if tenant is None or not ChannelAccount.objects.filter(pk=channel, tenant=tenant).exists():
        raise DeliveryTargetError(f"You have no channel {channel}; GET /api/channels/ lists yours.")
    if isinstance(to, int) and not isinstance(to, bool):
        to = str(to)
    if not isinstance(to, str) or not to.strip() or len(to.strip()) > MAX_TO_LENGTH:
        raise DeliveryTargetError(
            f"'to' must say where on the channel (a Discord channel or user id; for a webhook the recipient its "
            f"receiver expects), at most {MAX_TO_LENGTH} characters."
        )
    return {"kind": "channel", "channel": channel, "to": to.strip()}


MASK = "********"
_CREDENTIAL_HEADER = re.compile(r"authorization|cookie|token|secret|password|api[-_]?key|auth", re.I)


def _masked_headers(headers: dict) -> dict:
    return {k: MASK if _CREDENTIAL_HEADER.search(k) else v for k, v in headers.items()}


def deliver_public(target: dict | None) -> dict | None:
    """The target as shown to API clients: the secret and credential-bearing header values are write-only."""
    if not target:
        return None
    shown = dict(target)
    if target.get("secret"):
        shown["secret"] = MASK
    if target.get("headers"):
        shown["headers"] = _masked_headers(target["headers"])
    return shown


def deliver_keep_masked(new: dict | None, old: dict | None) -> dict | None:
    """`new` with masked values (a PUT of what GET showed) replaced by what `old` stores."""
    if not new or not old:
        return new
    kept = dict(new)
    if kept.get("secret") == MASK and old.get("secret"):
        kept["secret"] = old["secret"]
    if kept.get("headers"):
        stored = {k.lower(): v for k, v in (old.get("headers") or {}).items()}
        kept["headers"] = {
            k: stored.get(k.lower(), v) if v == MASK else v for k, v in kept["headers"].items()
        }
    return kept


def deliver_send(*, tenant_id: int, target: dict, payload: dict, delivery_id: str) -> DeliveryReceipt:
    """One attempt to deliver a job's payload to its target; raises the transport's DeliveryError."""
    if target.get("kind") != "channel":
        return webhook_send(target=target, payload=payload, delivery_id=delivery_id)
    account = ChannelAccount.objects.filter(pk=target.get("channel"), tenant_id=tenant_id).first()
    if account is None:
        raise PermanentDeliveryError(f"channel {target.get('channel')} no longer exists; change the job's 'deliver'")
    # A chat message cannot be empty: a run that ended without a reply says so (its error stays in the API).
    text = payload.get("text") or f"Scheduled job '{payload.get('job_name')}' ended {payload.get('status')} without a reply."
    return channel_message_send(
        account=account, to=target.get("to", ""), text=text, delivery_id=delivery_id, data=payload,
        timeout_seconds=settings.BEAMCLAW_CRON["DELIVERY_TIMEOUT_SECONDS"],
    )


def webhook_send(*, target: dict, payload: dict, delivery_id: str) -> DeliveryReceipt:
    """One attempt to POST a job's payload to its webhook; raises the transport's DeliveryError."""
    message = OutboundMessage(
        delivery_id=delivery_id, target=target, text=payload.get("text", ""), data=payload,
        timeout_seconds=settings.BEAMCLAW_CRON["DELIVERY_TIMEOUT_SECONDS"],
    )
    return transport_for("webhook").send(message)
