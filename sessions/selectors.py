"""Reads on sessions and runs that the edges share. Every one is scoped to a tenant: another tenant's
object is simply not found."""

from sessions.models import AgentSession, Run
from tenants.models import Tenant


def session_of(*, tenant: Tenant, session_id) -> AgentSession | None:
    return AgentSession.objects.select_related("agent", "tenant").filter(tenant=tenant, pk=session_id).first()


def run_of(*, tenant: Tenant, run_id) -> Run | None:
    return Run.objects.filter(tenant=tenant, pk=run_id).first()


def active_run_of(*, session: AgentSession) -> Run | None:
    """The run the session is working on (running or awaiting approval), if any."""
    return Run.objects.filter(session=session, status__in=Run.ACTIVE_STATUSES).first()
