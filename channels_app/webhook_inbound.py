"""The webhook channel, inbound: a signed POST to `/hooks/<account id>` becomes a run of the account's agent.

Invariants, and why:

- Nothing runs, and nothing is parsed, before the signature is checked. The signature is HMAC-SHA256 under
  the account's secret of `"<X-BeamClaw-Timestamp>.<raw body>"`: the body exactly as sent, so no JSON
  parser ever sees a stranger's bytes, and the timestamp is inside what is signed. Hence two steps for the
  edge (channels_app/hooks.py), which parses JSON as every edge does (beamclaw_project/json_input.py):
  `webhook_account_verify` on the raw body, and only with the account it returns, the parsed body to
  `webhook_message_receive`.
- One answer for every refusal of who is asking (401, UNAUTHORIZED): no account with that id, another
  kind of account, a disabled one, a missing or wrong signature, a timestamp more than
  TIMESTAMP_TOLERANCE_SECONDS off. Whoever lacks the secret cannot tell an existing account from a missing
  one, by the message or by the time it takes (an unknown account is checked against a stand-in secret,
  and signatures are compared in constant time).
- Replay: a captured request is only accepted within the timestamp window, and inside it its delivery id
  (the body's `id`) is claimed as the message's idempotency key (channels_app/inbound.py, kept 24 hours):
  the same delivery again starts nothing and answers with the run the first one started.
- The body is capped at MAX_BODY_BYTES before anything else (413), whoever sends it.
- An account without a callback URL is refused with a 400 before anything runs: its reply would have
  nowhere to go. (An account whose URL is removed while a run is going fails that reply, see
  channels_app/transports/webhook.py.)

What is accepted after that: docs/channels.md, "The webhook channel".
"""

import hashlib
import hmac
import re
import time
from dataclasses import dataclass

from beamclaw_project.errors import DomainError, Forbidden, InvalidInput
from channels_app.accounts import route_agent
from channels_app.inbound import InboundResult, PlatformMessage, platform_message_receive
from channels_app.models import ChannelAccount
from channels_app.transports.webhook import timestamped_signature
from tenants.models import Agent, Tenant

KIND = ChannelAccount.Kind.WEBHOOK
TIMESTAMP_HEADER = "X-BeamClaw-Timestamp"
SIGNATURE_HEADER = "X-BeamClaw-Signature"
MAX_BODY_BYTES = 1024 * 1024
TIMESTAMP_TOLERANCE_SECONDS = 300
MAX_ID_LENGTH = 200
FIELDS = ("id", "text", "content", "peer", "sender")
DEFAULT_PEER = "default"
UNAUTHORIZED = (
    "Not accepted: this endpoint takes requests signed with its webhook channel's secret. Send "
    "X-BeamClaw-Timestamp (unix seconds, within 5 minutes of now) and X-BeamClaw-Signature: sha256=<hex "
    "HMAC-SHA256 of \"<timestamp>.<raw body>\" under the channel's secret>, to an enabled webhook channel's URL."
)
_SIGNATURE = re.compile(r"^sha256=[0-9a-fA-F]{64}$")
_TIMESTAMP = re.compile(r"^[0-9]{1,12}$")
# Checked against when the account does not exist, so that a miss costs what a hit costs.
_STAND_IN_SECRET = hashlib.sha256(b"beamclaw webhook stand-in").hexdigest()


class WebhookUnauthorized(DomainError):
    status = 401
    code = "unauthorized"

    def __init__(self):
        super().__init__(UNAUTHORIZED)


class WebhookBodyTooLarge(DomainError):
    status = 413
    code = "request_too_large"

    def __init__(self):
        super().__init__(f"The request body is larger than {MAX_BODY_BYTES // 1024} KiB, the most a webhook message may be.")


class WebhookMessageInvalid(InvalidInput):
    pass


@dataclass(frozen=True)
class WebhookMessage:
    delivery_id: str
    content: str | list
    peer: str
    sender: str


def webhook_account_verify(*, account_id: int, timestamp: str | None, signature: str | None, body: bytes,
                           now: float | None = None) -> ChannelAccount:
    """The enabled webhook account that signed this request, or WebhookUnauthorized (the same for every
    reason, module docstring); WebhookBodyTooLarge first, whoever asks."""
    if len(body) > MAX_BODY_BYTES:
        raise WebhookBodyTooLarge()
    now = time.time() if now is None else now
    fresh = bool(timestamp and _TIMESTAMP.match(timestamp)) and abs(now - int(timestamp)) <= TIMESTAMP_TOLERANCE_SECONDS
    # An id past the column's range is simply no account (the URL takes any digits).
    account = (
        ChannelAccount.objects.select_related("tenant").filter(pk=account_id, kind=KIND, enabled=True).first()
        if 0 < account_id < 2**63 else None
    )
    expected = timestamped_signature(account.secret if account else _STAND_IN_SECRET, timestamp or "", body)
    given = signature.strip() if signature else ""
    signed = bool(_SIGNATURE.match(given)) and hmac.compare_digest(expected.encode(), given.lower().encode())
    if account is None or not fresh or not signed:
        raise WebhookUnauthorized()
    return account


def webhook_message_parse(data) -> WebhookMessage:
    """The message in a verified body (as parsed JSON); raises WebhookMessageInvalid naming the field at fault."""
    if not isinstance(data, dict):
        raise WebhookMessageInvalid('The body must be a JSON object: {"id": "<delivery id>", "text": "..."}.', field="body")
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise WebhookMessageInvalid(
            f"Unknown field(s) {', '.join(unknown)}; a webhook message has {', '.join(FIELDS)}.", field=unknown[0]
        )
    if _has_nul(data):
        # Postgres stores no NUL character; refused here rather than failing deep inside.
        raise WebhookMessageInvalid("The body contains a NUL character (\\u0000), which is not allowed.", field="body")
    delivery_id = data.get("id")
    if isinstance(delivery_id, int) and not isinstance(delivery_id, bool):
        delivery_id = str(delivery_id)
    if not isinstance(delivery_id, str) or not delivery_id.strip() or len(delivery_id) > MAX_ID_LENGTH:
        raise WebhookMessageInvalid(
            f"'id' is required: this delivery's own id (a string of at most {MAX_ID_LENGTH} characters), the same "
            "when you send the delivery again, so it is answered once.", field="id",
        )
    if ("text" in data) == ("content" in data):
        raise WebhookMessageInvalid("Give the message as 'text' (a string) or 'content' (content parts), one of them.", field="text")
    content = data["text"] if "text" in data else data["content"]
    if "text" in data and not isinstance(content, str):
        raise WebhookMessageInvalid("'text' must be a string.", field="text")
    peer, sender = data.get("peer"), data.get("sender")
    for name, value in (("peer", peer), ("sender", sender)):
        if value is not None and (not isinstance(value, str) or not value.strip() or len(value) > MAX_ID_LENGTH):
            raise WebhookMessageInvalid(f"'{name}' must be a non-empty string of at most {MAX_ID_LENGTH} characters.", field=name)
    return WebhookMessage(delivery_id=delivery_id, content=content, peer=peer or sender or DEFAULT_PEER, sender=sender or "")


def webhook_message_receive(*, account: ChannelAccount, data) -> InboundResult:
    """Start the run of one delivery that `account` signed (webhook_account_verify), or return the run its
    first delivery started. `data` is the body, parsed.

    Raises WebhookMessageInvalid or another InvalidInput (400: the body, content sessions/content.py refuses,
    no callback URL), Forbidden (403: the tenant is suspended), and what platform_message_receive raises
    (LimitExceeded, SessionClosed)."""
    message = webhook_message_parse(data)
    tenant = account.tenant
    if tenant.status != Tenant.Status.ACTIVE:
        raise Forbidden("This channel's tenant is suspended; nothing was run.", code="tenant_suspended")
    if not account.config.get("callback_url"):
        raise InvalidInput(
            f"Webhook channel '{account.name}' has no callback_url, so its reply could not be sent; nothing was run. "
            "Set config.callback_url on the channel (PATCH /api/channels/…) and send the delivery again.",
            code="no_callback_url", field="callback_url",
        )
    agent_id = route_agent(account=account, bindings=list(account.bindings.all()), peer_id=message.peer)
    return platform_message_receive(message=PlatformMessage(
        tenant=tenant, agent=Agent.objects.get(pk=agent_id), kind=KIND, peer=message.peer, sender=message.sender,
        content=message.content, message_id=message.delivery_id, reply_target={"account": account.pk},
        queue_mode=account.config.get("queue_mode"),
    ))


def _has_nul(value) -> bool:
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, str) and "\x00" in node:
            return True
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return False
