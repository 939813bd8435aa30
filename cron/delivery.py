"""Where a job's final reply goes: cron's `deliver` field (its input format and how the API shows it), and
the sending, through the channel transports (channels_app/transport.py).

A delivery target is stored as `{"kind": "webhook", "url": ..., "headers"?: {...}, "secret"?: ...}`; what
a webhook target may hold, how it is sent and which errors are transient is the webhook transport's
(channels_app/transports/webhook.py). A job's delivery id is `cron-run-<id>`, the same on every retry.
The secret and credential-bearing header values are write-only: the API shows them masked, and a PUT of
what GET showed keeps the stored values.
"""

import re

from django.conf import settings

from channels_app.transport import DeliveryError, DeliveryReceipt, OutboundMessage, TargetInvalid, transport_for
from channels_app.transports.webhook import NO_ANSWER

# cron's callers (and its tests) name the transport's error and its no-answer text through this module.
__all__ = [
    "NO_ANSWER", "DeliveryError", "DeliveryTargetError", "deliver_keep_masked", "deliver_parse", "deliver_public",
    "webhook_send",
]


class DeliveryTargetError(ValueError):
    """A delivery target that cannot be used (400 at the API)."""


def deliver_parse(value) -> dict | None:
    """The normalized target from the API's `deliver`: null, a URL, or an object with `kind`."""
    if value in (None, "", {}):
        return None
    if isinstance(value, str):
        value = {"kind": "webhook", "url": value}
    if not isinstance(value, dict):
        raise DeliveryTargetError('Give a webhook URL or {"kind": "webhook", "url": "https://…"}.')
    kind = value.get("kind", "webhook")
    if kind != "webhook":
        raise DeliveryTargetError(f"Delivery kind '{kind}' is not available; use 'webhook'.")
    try:
        target = transport_for("webhook").parse_target({k: v for k, v in value.items() if k != "kind"})
    except TargetInvalid as exc:
        raise DeliveryTargetError(exc.message) from None
    return {"kind": "webhook", **target}


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


def webhook_send(*, target: dict, payload: dict, delivery_id: str) -> DeliveryReceipt:
    """One attempt to POST a job's payload to its webhook; raises the transport's DeliveryError."""
    message = OutboundMessage(
        delivery_id=delivery_id, target=target, text=payload.get("text", ""), data=payload,
        timeout_seconds=settings.BEAMCLAW_CRON["DELIVERY_TIMEOUT_SECONDS"],
    )
    return transport_for("webhook").send(message)
