"""Writes on sessions that are not part of running an agent turn (see engine.py for those)."""

import secrets

from django.db import IntegrityError, transaction
from django.utils import timezone

from sessions.models import AgentSession, Message, Run
from tenants.models import Agent, Tenant


class SessionConflict(Exception):
    """The request is valid but the session's state does not allow it (409)."""


def session_key_normalize(*, agent: Agent, key: str | None) -> str:
    """`agent:<agent>:<name>` from a full key or a bare name; a fresh name when none is given."""
    if not key:
        return f"agent:{agent.slug}:{secrets.token_hex(6)}"
    if key.startswith("agent:"):
        parts = key.split(":")
        if len(parts) < 3 or parts[1] != agent.slug or not all(parts[2:]):
            raise ValueError(f"A session key of agent '{agent.slug}' looks like agent:{agent.slug}:<name>.")
        return key
    return f"agent:{agent.slug}:{key}"


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
    to a closed archive session (`<key>#<timestamp>`), which is returned."""
    locked = AgentSession.objects.select_for_update().get(pk=session.pk)
    if Run.objects.filter(session=locked, status__in=(*Run.ACTIVE_STATUSES, Run.Status.QUEUED)).exists():
        raise SessionConflict("The session has a run in progress or waiting; abort it before resetting.")
    archive = AgentSession.objects.create(
        tenant_id=locked.tenant_id,
        agent_id=locked.agent_id,
        key=f"{locked.key}#{timezone.now():%Y%m%dT%H%M%S.%f}",
        status=AgentSession.Status.CLOSED,
        queue_mode=locked.queue_mode,
        next_seq=locked.next_seq,
        input_tokens=locked.input_tokens,
        output_tokens=locked.output_tokens,
    )
    Message.objects.filter(session=locked).update(session=archive)
    Run.objects.filter(session=locked).update(session=archive)
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
