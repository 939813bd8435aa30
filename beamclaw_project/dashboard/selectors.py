"""Reads behind the dashboard: staff see every tenant, narrowed by the tenant filter a page was given.

Every list is bounded (a page never loads a table whole). The live-runs query is the one repeated, once a
second by each open runs page (consumers.py): it reads only runs that are not finished, through the
(tenant, status) index, so its cost follows the number of live runs, not the size of the runs table.
"""

from django.db.models import Max, Min, OuterRef, Subquery

from cron.models import CronJob, CronRun
from sessions.models import AgentSession, Message, Run, ToolCall
from tenants.models import Agent, Tenant
from tools.models import Approval

LIVE_STATUSES = (Run.Status.QUEUED, Run.Status.RUNNING, Run.Status.AWAITING_APPROVAL)
LIVE_RUNS_SHOWN = 200
RECENT_RUNS_SHOWN = 50
SESSIONS_PER_PAGE = 50
TRANSCRIPT_MESSAGES_SHOWN = 200
DECIDED_APPROVALS_SHOWN = 20
CRON_RUNS_SHOWN = 50


def tenants_all() -> list[Tenant]:
    return list(Tenant.objects.order_by("slug"))


def tenant_by_slug(*, slug: str) -> Tenant | None:
    return Tenant.objects.filter(slug=slug).first()


def _runs(tenant: Tenant | None):
    runs = Run.objects.select_related("tenant", "session__agent")
    return runs.filter(tenant=tenant) if tenant is not None else runs


def runs_live(*, tenant: Tenant | None = None) -> list[Run]:
    """Queued, running and waiting runs, oldest first (the ones waiting longest are the ones to look at)."""
    runs = _runs(tenant).filter(status__in=LIVE_STATUSES)
    if tenant is None:
        # Spelled per tenant so Postgres walks the (tenant, status) index instead of scanning every run.
        runs = runs.filter(tenant_id__in=Tenant.objects.values("pk"))
    return list(runs.order_by("created_at")[:LIVE_RUNS_SHOWN])


def runs_recent_finished(*, tenant: Tenant | None = None) -> list[Run]:
    return list(_runs(tenant).filter(status__in=Run.TERMINAL_STATUSES).order_by("-created_at")[:RECENT_RUNS_SHOWN])


def runs_by_ids(*, ids) -> list[Run]:
    return list(_runs(None).filter(pk__in=ids).order_by("-created_at"))


def run_by_id(*, run_id) -> Run | None:
    return _runs(None).filter(pk=run_id).first()


def run_tool_calls(*, run: Run) -> list[ToolCall]:
    return list(ToolCall.objects.filter(run=run).select_related("approval").order_by("step", "id"))


def run_messages(*, run: Run) -> list[Message]:
    """The run's part of its session's transcript: from its user message to its last reply, including the
    tool results between them (stored as user turns that belong to no run)."""
    span = Message.objects.filter(run=run).aggregate(first=Min("seq"), last=Max("seq"))
    if span["first"] is None:
        return []
    messages = Message.objects.filter(session_id=run.session_id, seq__range=(span["first"], span["last"]))
    return list(messages.order_by("seq"))


def sessions_page(*, tenant: Tenant | None, search: str, include_ephemeral: bool, page: int) -> tuple[list[AgentSession], bool]:
    """One page of sessions, most recently active first, and whether there is a next page."""
    sessions = AgentSession.objects.select_related("tenant", "agent").order_by("-updated_at")
    if tenant is not None:
        sessions = sessions.filter(tenant=tenant)
    if not include_ephemeral:
        sessions = sessions.filter(ephemeral=False)
    if search:
        sessions = sessions.filter(key__icontains=search)
    start = (page - 1) * SESSIONS_PER_PAGE
    rows = list(sessions[start: start + SESSIONS_PER_PAGE + 1])
    return rows[:SESSIONS_PER_PAGE], len(rows) > SESSIONS_PER_PAGE


def session_by_id(*, session_id) -> AgentSession | None:
    return AgentSession.objects.select_related("tenant", "agent").filter(pk=session_id).first()


def session_transcript(*, session: AgentSession) -> tuple[list[Message], int]:
    """The last messages of the session in order, and how many it has in all."""
    messages = Message.objects.filter(session=session)
    total = messages.count()
    latest = list(messages.order_by("-seq")[:TRANSCRIPT_MESSAGES_SHOWN])
    return latest[::-1], total


def session_open_run(*, session: AgentSession) -> Run | None:
    """The run a chat on this session is waiting for: the oldest one not finished."""
    return Run.objects.filter(session=session, status__in=LIVE_STATUSES).order_by("created_at").first()


def agents_all(*, tenant: Tenant | None) -> list[Agent]:
    agents = Agent.objects.select_related("tenant").order_by("tenant__slug", "slug")
    return list(agents.filter(tenant=tenant) if tenant is not None else agents)


def agent_by_id(*, agent_id) -> Agent | None:
    return Agent.objects.select_related("tenant").filter(pk=agent_id).first()


def _approvals(tenant: Tenant | None):
    approvals = Approval.objects.select_related("tenant", "agent", "session", "tool_call")
    return approvals.filter(tenant=tenant) if tenant is not None else approvals


def approvals_pending(*, tenant: Tenant | None = None) -> list[Approval]:
    return list(_approvals(tenant).filter(status=Approval.Status.PENDING).order_by("created_at"))


def approvals_decided(*, tenant: Tenant | None = None) -> list[Approval]:
    decided = _approvals(tenant).exclude(status=Approval.Status.PENDING)
    return list(decided.order_by("-created_at")[:DECIDED_APPROVALS_SHOWN])


def approval_by_id(*, approval_id) -> Approval | None:
    return Approval.objects.select_related("tenant").filter(pk=approval_id).first()


def cron_jobs(*, tenant: Tenant | None = None) -> list[CronJob]:
    """Jobs with their latest occurrence's delivery outcome (`last_delivery_status`, `last_delivery_error`):
    a run that succeeded but whose reply never reached its destination is not a success to an operator."""
    latest = CronRun.objects.filter(job=OuterRef("pk")).order_by("-scheduled_for", "-id")
    jobs = CronJob.objects.select_related("tenant", "agent").annotate(
        last_delivery_status=Subquery(latest.values("delivery_status")[:1]),
        last_delivery_error=Subquery(latest.values("delivery_error")[:1]),
    )
    if tenant is not None:
        jobs = jobs.filter(tenant=tenant)
    return list(jobs.order_by("tenant__slug", "agent__slug", "name"))


def cron_job_by_id(*, job_id) -> CronJob | None:
    return CronJob.objects.select_related("tenant", "agent").filter(pk=job_id).first()


def cron_job_history(*, job: CronJob) -> list[CronRun]:
    return list(CronRun.objects.filter(job=job).select_related("run").order_by("-scheduled_for", "-id")[:CRON_RUNS_SHOWN])
