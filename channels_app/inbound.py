"""Inbound: a message from a chat platform becomes a run of the agent, in its conversation's session.

Every channel adapter (a Discord bot, a signed webhook endpoint) turns what its platform sent into a
`PlatformMessage` and calls `platform_message_receive`; nothing else about a platform reaches the sessions.

- One session per conversation: `agent:<agent>:<kind>:<peer>`, where the peer is the platform's id of the
  DM, channel or thread. A peer is kept as it is when it is a plain id, or one scope word and a plain id
  (`dm:123`, which a webhook sender may use to keep its kinds of conversation apart); any other peer (more
  ':', an odd character, a long one) is replaced by `~` and a digest of itself, so the key stays stable,
  readable where it can be, and within the column.
- A platform message starts at most one run. Its id is claimed as an idempotency key (sessions/idempotency.py,
  endpoint `channel.<kind>`, per agent and conversation, kept 24 hours) in the transaction that submits the
  run: a redelivered event (a gateway resume, a webhook retried after a lost answer) gets the first run back,
  and two concurrent deliveries of one message serialise on the key's unique index. The key is
  `<agent id>:<kind>:<peer as in the session key>:<message id>`, where a message id with a ':' (or a
  leading '~') is digested: the message id never has a ':', so the key splits back one way only and two
  messages never share one.
- The reply is owed from that same transaction: a ChannelReply names the run and where its answer goes.
  When the run ends, the answer is sent through the channel's transport (channels_app/services.py).
"""

import hashlib
import re
from dataclasses import dataclass, field

from django.db import transaction

from beamclaw_project.errors import InvalidInput
from beamclaw_project.infra.metrics import channel_message_record
from channels_app.models import ChannelReply
from channels_app.transport import transport_for
from sessions.content import content_parse
from sessions.idempotency import idempotency_claim, idempotency_record, request_fingerprint
from sessions.models import AgentSession, Run
from sessions.runs import run_submit
from sessions.services import session_get_or_create
from tenants.models import Agent, Tenant

# Peer ids used in session keys as they are: platform ids are numbers or short tokens like these, alone or
# after one lowercase scope word (`dm:123`, `channel:ops`).
_PLAIN_PEER = re.compile(r"^[\w.@+-]{1,128}$")
_PEER_SCOPE = re.compile(r"^[a-z][a-z0-9_]{0,23}$")
_KEY_MAX = 255  # IdempotencyKey.key


@dataclass(frozen=True)
class PlatformMessage:
    tenant: Tenant
    agent: Agent
    kind: str  # the channel's transport kind, e.g. "discord"
    peer: str  # the conversation on the platform: a DM, a channel, a thread
    sender: str  # who wrote it, in the platform's ids
    content: str | list  # text, or content parts as the REST API takes them (sessions/content.py)
    message_id: str  # the platform's id of this message; a redelivery carries the same one
    # What the transport needs to answer beyond the conversation and the message (e.g. a callback URL).
    reply_target: dict = field(default_factory=dict)
    # How this message queues behind a reply still being written in its conversation (an AgentSession
    # queue mode, usually the account's `queue_mode`); None: the session's own.
    queue_mode: str | None = None


@dataclass(frozen=True)
class InboundResult:
    session: AgentSession
    run: Run
    duplicate: bool  # True: a redelivery; `run` is the one the first delivery started


def _plain(value: str) -> bool:
    # A leading '~' marks a digest; a plain id never starts with one, so the two never meet.
    return bool(_PLAIN_PEER.match(value)) and not value.startswith("~")


def _digest(value: str) -> str:
    return f"~{hashlib.sha256(value.encode()).hexdigest()[:32]}"


def channel_session_key(*, kind: str, peer: str) -> str:
    """The session name of a conversation (the key is `agent:<agent>:` and this)."""
    scope, colon, rest = peer.partition(":")
    if _plain(peer) or (colon and _PEER_SCOPE.match(scope) and _plain(rest)):
        return f"{kind}:{peer}"
    return f"{kind}:{_digest(peer)}"


def platform_message_receive(*, message: PlatformMessage) -> InboundResult:
    """Start the run that answers a platform message, or return the one an earlier delivery of it started.

    Raises InvalidInput (sessions/content.py's ContentInvalid among them) for a message that cannot be a
    user turn, UnknownTransport for a kind no transport serves (its reply could never be sent),
    LimitExceeded when the tenant's token budget is spent and SessionClosed when an operator closed the
    conversation's session: the adapter tells its platform or drops the message."""
    if message.agent.tenant_id != message.tenant.pk:
        raise InvalidInput(f"Agent '{message.agent.slug}' is not tenant '{message.tenant.slug}'s.", field="agent")
    if not message.peer or not message.message_id:
        raise InvalidInput("A platform message needs its conversation (peer) and its own id.", field="message_id")
    if message.queue_mode is not None and message.queue_mode not in AgentSession.QueueMode.values:
        raise InvalidInput(
            f"queue_mode must be one of {', '.join(AgentSession.QueueMode.values)}.", field="queue_mode"
        )
    transport_for(message.kind)  # a kind nobody can answer on is refused before anything is written
    content = content_parse(message.content)
    conversation = channel_session_key(kind=message.kind, peer=message.peer)
    session = session_get_or_create(tenant=message.tenant, agent=message.agent, key=conversation)
    # The message id part never has a ':' (a digest stands in for one that does), so the key splits back
    # into agent, conversation and message one way only: two messages never share a key.
    message_part = message.message_id
    if ":" in message_part or message_part.startswith("~"):
        message_part = _digest(message_part)
    key = f"{message.agent.pk}:{conversation}:{message_part}"
    if len(key) > _KEY_MAX:
        key = request_fingerprint(message.agent.pk, conversation, message.message_id)
    with transaction.atomic():
        # A platform id names one message: a redelivery is the same request whatever it carries, so the
        # fingerprint is the key's own and a repeat never conflicts.
        claim = idempotency_claim(
            tenant_id=message.tenant.pk, endpoint=f"channel.{message.kind}", key=key, fingerprint=request_fingerprint(key)
        )
        if claim.replay:
            return InboundResult(session=session, run=claim.record.run, duplicate=True)
        run = run_submit(
            session=session, content=content, trigger=Run.Trigger.CHANNEL, mode=message.queue_mode,
            params={"channel": {"kind": message.kind, "peer": message.peer, "sender": message.sender,
                                "message_id": message.message_id}},
        )
        ChannelReply.objects.get_or_create(
            run=run,
            defaults={
                "tenant_id": message.tenant.pk, "kind": message.kind,
                "target": {**message.reply_target, "peer": message.peer, "in_reply_to": message.message_id},
            },
        )
        idempotency_record(claim, run=run)
    channel_message_record(kind=message.kind, direction="in")
    return InboundResult(session=session, run=run, duplicate=False)
