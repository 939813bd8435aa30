"""Writes on sessions that are not part of running an agent turn (the run engine, sessions/runs/, does those)."""

import hashlib
import secrets

from django.db import IntegrityError, transaction
from django.utils import timezone

from beamclaw_project.errors import Conflict, InvalidInput
from sessions.models import AgentSession, Compaction, Message, Run
from tenants.models import Agent, Tenant


class SessionConflict(Conflict):
    """The request is valid but the session's state does not allow it."""


class SessionKeyInvalid(InvalidInput):
    """A client-chosen session key that is another agent's or too long to store."""

    field = "key"


# The column's width: a longer key fails on the insert (a 500), so every key is checked against it first.
SESSION_KEY_MAX = AgentSession._meta.get_field("key").max_length
# What reset appends to the archive's key: "#" and a timestamp to the microsecond.
_ARCHIVE_SUFFIX_FORMAT = "#%Y%m%dT%H%M%S.%f"


def session_key_normalize(*, agent: Agent | None = None, agent_slug: str | None = None, key: str | None) -> str:
    """`agent:<agent>:<name>` from a full key or a bare name; a fresh name when none is given.

    The one check of client-chosen session keys (REST, WebSocket, the OpenAI endpoint's `user` /
    X-Session-Key): raises SessionKeyInvalid, with a message naming the limit, for a key of another agent or
    one too long to store. The limit is on the whole key, so how long a name may be depends on the agent's slug."""
    slug = agent.slug if agent is not None else agent_slug
    prefix = f"agent:{slug}:"
    if not key:
        return prefix + secrets.token_hex(6)
    if key.startswith("agent:"):
        parts = key.split(":")
        if len(parts) < 3 or parts[1] != slug or not all(parts[2:]):
            raise SessionKeyInvalid(f"A session key of agent '{slug}' looks like agent:{slug}:<name>.")
        full_key = key
    else:
        full_key = prefix + key
    if len(full_key) > SESSION_KEY_MAX:
        raise SessionKeyInvalid(
            f"The session key is {len(full_key)} characters; at most {SESSION_KEY_MAX} are allowed for the whole "
            f"key {prefix}<name>, so a name for agent '{slug}' may have at most {SESSION_KEY_MAX - len(prefix)}."
        )
    return full_key


def session_archive_key(key: str, now) -> str:
    """`<key>#<timestamp>`, within the column's width. A key too long for the suffix keeps its start and a
    digest of the whole key in place of the rest, so archives of two long keys that share a start still
    differ, and the archive still says which session it came from (its agent and the name's start)."""
    suffix = now.strftime(_ARCHIVE_SUFFIX_FORMAT)
    if len(key) + len(suffix) <= SESSION_KEY_MAX:
        return key + suffix
    digest = "~" + hashlib.sha256(key.encode()).hexdigest()[:12]
    return key[: SESSION_KEY_MAX - len(suffix) - len(digest)] + digest + suffix


def session_create(*, tenant: Tenant, agent: Agent, key: str | None = None, queue_mode: str | None = None) -> AgentSession:
    full_key = session_key_normalize(agent=agent, key=key)
    try:
        with transaction.atomic():
            return AgentSession.objects.create(
                tenant=tenant, agent=agent, key=full_key, queue_mode=queue_mode or AgentSession.QueueMode.FOLLOWUP
            )
    except IntegrityError:
        raise SessionConflict(f"A session with key '{full_key}' already exists.")


def session_get_or_create(*, tenant: Tenant, agent: Agent, key: str) -> AgentSession:
    full_key = session_key_normalize(agent=agent, key=key)
    session = AgentSession.objects.filter(tenant=tenant, key=full_key).first()
    if session is None:
        try:
            with transaction.atomic():
                session = AgentSession.objects.create(tenant=tenant, agent=agent, key=full_key)
        except IntegrityError:  # created by a concurrent request
            session = AgentSession.objects.get(tenant=tenant, key=full_key)
    if session.agent_id != agent.pk:
        raise SessionConflict(f"Session '{full_key}' belongs to another agent.")
    return session


@transaction.atomic
def session_reset(*, session: AgentSession) -> AgentSession:
    """Start the session over with an empty transcript. Nothing is lost: the old transcript and runs move
    to a closed archive session (`<key>#<timestamp>`, see session_archive_key), which is returned."""
    locked = AgentSession.objects.select_for_update(no_key=True).get(pk=session.pk)
    if Run.objects.filter(session=locked, status__in=(*Run.ACTIVE_STATUSES, Run.Status.QUEUED)).exists():
        raise SessionConflict("The session has a run in progress or waiting; abort it before resetting.")
    archive = AgentSession.objects.create(
        tenant_id=locked.tenant_id,
        agent_id=locked.agent_id,
        key=session_archive_key(locked.key, timezone.now()),
        status=AgentSession.Status.CLOSED,
        queue_mode=locked.queue_mode,
        next_seq=locked.next_seq,
        input_tokens=locked.input_tokens,
        output_tokens=locked.output_tokens,
    )
    Message.objects.filter(session=locked).update(session=archive)
    Run.objects.filter(session=locked).update(session=archive)
    # A summary belongs to the transcript it summarizes: the fresh conversation starts without one.
    Compaction.objects.filter(session=locked).update(session=archive)
    locked.next_seq = 1
    locked.input_tokens = locked.output_tokens = 0
    locked.status = AgentSession.Status.ACTIVE
    locked.save(update_fields=["next_seq", "input_tokens", "output_tokens", "status", "updated_at"])
    return archive


@transaction.atomic
def session_delete(*, session: AgentSession) -> None:
    locked = AgentSession.objects.select_for_update().get(pk=session.pk)
    if Run.objects.filter(session=locked, status__in=Run.ACTIVE_STATUSES).exists():
        raise SessionConflict("The session has an active run; abort it before deleting the session.")
    locked.delete()
