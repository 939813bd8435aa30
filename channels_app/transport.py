"""The outbound side of every channel: one small interface, one module per platform behind it.

A transport takes an `OutboundMessage` and puts it on its platform (a webhook POST, a Discord message, ...).
It is registered under its kind (`register_transport("discord", DiscordTransport())`); callers look it up
with `transport_for(kind)` and never import a platform module. The contract every transport keeps:

- Idempotency: `message.delivery_id` is the same on every attempt of one delivery. A transport passes it on
  where its platform can dedupe on it (the webhook's `X-BeamClaw-Delivery` header, a platform's nonce), so
  a retry after a lost answer does not post twice at a receiver that looks. Delivery is at least once.
- One attempt per `send`: the transport does not retry or sleep. It returns a `DeliveryReceipt`, or raises
  `TransientDeliveryError` (worth trying again later: timeouts, connection failures, 5xx, 429, with the
  platform's `retry_after` when it said one) or `PermanentDeliveryError` (trying again cannot help: another
  4xx, a target that does not exist or is malformed, a target the outbound address policy refuses).
- Who retries: the caller, as a Celery task retried with exponential backoff (`retry_countdown`), up to
  its own number of attempts. A permanent error ends the delivery at once; the caller records it.
- Error messages are shown to the tenant (cron's `delivery_error`): a status or a short reason, never a
  receiver's body or where an internal name resolves. Details go to the log under the delivery id.
- Every request to an address a tenant or a platform message chose goes through the outbound address
  policy (beamclaw_project/infra/address_policy.py).

Transports are built in (channels_app/apps.py) or plugged in by an operator's module named in
BEAMCLAW_PLUGINS, loaded after the built-ins in every process, so a plug-in may replace a built-in.
"""

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

# A kind also names the conversation's sessions and its dedupe scope (channels_app/inbound.py), hence short
# and plain.
_KIND = re.compile(r"^[a-z][a-z0-9_-]{0,23}$")
# A platform may ask for a long pause; a Celery countdown much longer than this would sit in a worker's
# memory past the broker's redelivery time, so it is capped and the backoff takes over from there.
MAX_RETRY_AFTER_SECONDS = 300.0


@dataclass(frozen=True)
class OutboundMessage:
    delivery_id: str  # the same on every attempt of one delivery
    target: dict  # where, in the transport's own terms (its `parse_target` says which keys)
    text: str
    # Structured context for transports that carry it (the webhook's JSON body); chat transports send `text`.
    data: dict = field(default_factory=dict)
    # The caller's deadline for one attempt; None: the transport's default.
    timeout_seconds: float | None = None


@dataclass(frozen=True)
class DeliveryReceipt:
    delivery_id: str
    # The platform's id for what was posted, where it gives one (to edit or thread on it later).
    remote_id: str = ""


class DeliveryError(Exception):
    transient: bool

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class TransientDeliveryError(DeliveryError):
    transient = True

    def __init__(self, message: str, *, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class PermanentDeliveryError(DeliveryError):
    transient = False


class TargetInvalid(ValueError):
    """A target a transport cannot use, found when it is saved (a 400 at the API that takes it)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class UnknownTransport(LookupError):
    pass


class Transport(ABC):
    def parse_target(self, value: dict) -> dict:
        """The normalized target from a tenant's input; raises TargetInvalid naming what is wrong."""
        return dict(value)

    @abstractmethod
    def send(self, message: OutboundMessage) -> DeliveryReceipt:
        """One attempt (module docstring)."""


_TRANSPORTS: dict[str, Transport] = {}


def register_transport(kind: str, transport: Transport) -> None:
    if not _KIND.match(kind):
        raise ValueError(f"A transport kind is 1 to 24 of a-z, 0-9, '_' and '-', starting with a letter; not {kind!r}.")
    _TRANSPORTS[kind] = transport


def transport_for(kind: str) -> Transport:
    transport = _TRANSPORTS.get(kind)
    if transport is None:
        raise UnknownTransport(
            f"No transport for channel kind '{kind}' in this process (known: {', '.join(sorted(_TRANSPORTS)) or 'none'}); "
            "a plug-in's kind needs its module in BEAMCLAW_PLUGINS for every process."
        )
    return transport


def retry_countdown(*, retries: int, base_seconds: float, error: TransientDeliveryError) -> float:
    """Seconds before the next attempt: exponential backoff, or the platform's Retry-After when longer."""
    backoff = base_seconds * 2**retries
    return max(backoff, min(error.retry_after or 0.0, MAX_RETRY_AFTER_SECONDS))
