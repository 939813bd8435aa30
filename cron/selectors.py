"""Reads on cron jobs and runs."""

from django.db.models import QuerySet

from cron.models import CronJob, CronRun
from sessions.models import Message
from tenants.models import Agent, Tenant


def cron_jobs_of(*, tenant: Tenant, agent: Agent | None = None) -> QuerySet[CronJob]:
    jobs = CronJob.objects.filter(tenant=tenant).select_related("agent")
    return jobs.filter(agent=agent) if agent is not None else jobs


def cron_runs_of(*, job: CronJob, status: str | None = None) -> QuerySet[CronRun]:
    runs = CronRun.objects.filter(job=job)
    return runs.filter(status=status) if status else runs


def cron_run_reply_text(*, cron_run: CronRun) -> str:
    """The run's final reply: the text of its last assistant message ("" when it has none)."""
    if cron_run.run_id is None:
        return ""
    reply = Message.objects.filter(run_id=cron_run.run_id, role=Message.Role.ASSISTANT).order_by("-seq").first()
    return reply.text if reply is not None else ""
