"""Writes on cron jobs and their runs: creating and changing jobs, firing occurrences, settling runs,
the sweeper, delivery.

Lock order everywhere: the job row, then its CronRun rows, then django-celery-beat's rows (the PeriodicTask
and the one `PeriodicTasks` row every PeriodicTask write updates). Deleting a job takes the job row first
too, so its cascade over the runs cannot meet a settle that holds the job and waits for a run.

No transaction that holds a cron lock starts an agent run. The engine locks the session and then the
tenant row, while inserting a CronRun (or a session) holds a key-share lock on that tenant row until
commit; both in one transaction deadlocked two firings of one tenant, and a firing against the engine,
when the engine's locks were FOR UPDATE (they are FOR NO KEY UPDATE now, sessions/runs/kernel.py). An
occurrence is still claimed in one transaction and its run started after it commits (`_start`), which
keeps cron's locks out of the engine's order. The one exception is a batch of new sessions
(`_start_isolated`): its CronRuns are made to name runs and sessions created in the same transaction,
which nobody else can lock yet.

A wake-up of a due job claims its tenant's other due jobs with it (`cron_job_fire_with_tenant`), so a
minute boundary with a thousand jobs due costs a few statements per tenant rather than two dozen per job.
"""

import logging
from datetime import datetime, timedelta
from functools import cache

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from beamclaw_project.errors import Conflict, InvalidInput, LimitExceeded, NotFound
from beamclaw_project.infra.deliveries import deliveries_unleased, delivery_send
from beamclaw_project.infra.metrics import cron_lag_observe
from beamclaw_project.infra.outages import outage_of
from beamclaw_project.infra.queues import SYSTEM_QUEUE, tenant_queue
from beamclaw_project.infra.rows import (
    Columns,
    instances,
    rows_insert_statements,
    rows_inserted,
    select_all,
    select_together,
)
from cron import schedule as sched
from cron.beat import beat_needs_realign, beat_remove, beat_sync
from cron.delivery import DeliveryError, deliver_keep_masked, deliver_send
from cron.models import CronJob, CronRun
from cron.selectors import cron_run_reply_text
from sessions.models import AgentSession, Run
from sessions.runs import UNSTREAMED_PARAM, SessionClosed, run_abort, run_submit, runs_submit_isolated
from sessions.services import SessionConflict, session_get_or_create
from tenants.models import Agent, Tenant

logger = logging.getLogger(__name__)

DELIVER_TASK = "cron.deliver"
# An occurrence's reply is delivered whole once its run ends: its deltas may travel joined (a reader that
# follows the run meanwhile still gets them as they come: sessions/runs/delta_window.py).
_RUN_PARAMS = {UNSTREAMED_PARAM: True}
DELIVERY_KIND = "cron-run"

# beat's wake-up may come a little before the occurrence (clock skew between the beat and worker hosts);
# never more than a quarter interval early, or a second beat could claim the next occurrence.
EARLY_TOLERANCE = timedelta(seconds=0.5)
# Fields that only record what happened; saving them does not touch the beat schedule.
BOOKKEEPING_FIELDS = frozenset(
    {"next_run_at", "last_run_at", "last_status", "consecutive_errors", "updated_at"}
)


class CronJobInvalid(InvalidInput):
    """A change that cannot be made; `field` names the input at fault."""

    def __init__(self, message: str, *, field: str):
        super().__init__(message, field=field)


class CronJobLimitReached(Conflict):
    """The tenant has as many jobs as it may."""

    code = "cron_job_limit"


class CronJobGone(NotFound):
    """The job was deleted meanwhile."""

    def __init__(self, message: str = "No cron job matches the given query (it was deleted)."):
        super().__init__(message)


def _conf(name: str):
    return settings.BEAMCLAW_CRON[name]


# --- jobs ---------------------------------------------------------------------------------------------------


def _save_job(job: CronJob, *, rescheduled: bool) -> CronJob:
    """Save a job. Its next occurrence and PeriodicTask follow from the save (cron.beat.beat_sync)."""
    if rescheduled and job.enabled and job.schedule.next_after(timezone.now()) is None:
        raise CronJobInvalid(
            f"This job has nothing left to run: its 'at' time {job.at.isoformat()} has passed; give a new one.",
            field="schedule",
        )
    try:
        with transaction.atomic():
            job.save()
    except IntegrityError:
        raise CronJobInvalid(f"Agent '{job.agent.slug}' already has a job named '{job.name}'.", field="name") from None
    return job


def cron_job_create(
    *,
    tenant: Tenant,
    agent: Agent,
    name: str,
    prompt: str,
    schedule: sched.Schedule,
    session_target: str = CronJob.SessionTarget.MAIN,
    deliver: dict | None = None,
    enabled: bool = True,
    timeout_seconds: int | None = None,
) -> CronJob:
    if agent.tenant_id != tenant.pk:
        raise CronJobInvalid(f"You have no agent '{agent.slug}'.", field="agent")
    job = CronJob(
        tenant=tenant, agent=agent, name=name, prompt=prompt, session_target=session_target, deliver=deliver,
        enabled=enabled, timeout_seconds=timeout_seconds or _conf("RUN_TIMEOUT_SECONDS"),
    )
    job.schedule = schedule
    with transaction.atomic():
        # Concurrent creations of one tenant count each other. An advisory lock rather than the tenant row:
        # the engine locks that row FOR UPDATE, and a lock on it here would join (and could cross) its order.
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", [f"beamclaw.cron.jobs:{tenant.pk}"])
        cap = _conf("MAX_JOBS_PER_TENANT")
        if CronJob.objects.filter(tenant=tenant).count() >= cap:
            raise CronJobLimitReached(
                f"You have {cap} cron jobs, the most a tenant may have. Delete jobs you no longer need "
                f"(DELETE /api/cron/jobs/{{id}}/) to make room; disabled jobs count too."
            )
        return _save_job(job, rescheduled=True)


_UPDATABLE = {"agent", "name", "prompt", "schedule", "session_target", "deliver", "enabled", "timeout_seconds"}


def cron_job_update(*, job: CronJob, changes: dict) -> CronJob:
    """Apply `changes` (keys from _UPDATABLE; `schedule` a parsed Schedule). Re-enabling clears the error
    count and the disabled reason."""
    unknown = set(changes) - _UPDATABLE
    if unknown:
        raise CronJobInvalid(f"Cannot change {', '.join(sorted(unknown))}.", field=sorted(unknown)[0])
    if "agent" in changes and changes["agent"].tenant_id != job.tenant_id:
        raise CronJobInvalid(f"You have no agent '{changes['agent'].slug}'.", field="agent")
    with transaction.atomic():
        locked = CronJob.objects.select_for_update(of=("self",)).select_related("agent", "tenant").filter(pk=job.pk).first()
        if locked is None:
            raise CronJobGone()
        if changes.get("enabled") and not locked.enabled:
            locked.consecutive_errors = 0
            locked.disabled_reason = ""
        if changes.get("enabled") is False:
            locked.disabled_reason = "disabled by request"
        if "deliver" in changes:
            changes = {**changes, "deliver": deliver_keep_masked(changes["deliver"], locked.deliver)}
        for field, value in changes.items():
            setattr(locked, field, value)
        return _save_job(locked, rescheduled="schedule" in changes or "enabled" in changes)


def cron_job_set_enabled(*, job: CronJob, enabled: bool) -> CronJob:
    return cron_job_update(job=job, changes={"enabled": enabled})


def cron_job_delete(*, job: CronJob) -> None:
    """Delete the job and its history. Its PeriodicTask goes with it (cron.receivers), however a job is deleted.
    The job row is locked first (the order everywhere): a firing in progress finishes before, and none can
    claim a run between the cascade over the runs and the job's own row, which broke the runs' foreign key."""
    with transaction.atomic():
        locked = CronJob.objects.select_for_update(of=("self",)).filter(pk=job.pk).first()
        if locked is None:
            raise CronJobGone()
        locked.delete()


# --- firing -------------------------------------------------------------------------------------------------


# A wake-up claims at most this many of its tenant's due jobs in one transaction; the rest are claimed by
# their own wake-ups.
FIRE_BATCH = 200


def _skip_reason(job: CronJob, cron_run: CronRun, now: datetime, *, previous_running: bool) -> str:
    if job.tenant.status != job.tenant.Status.ACTIVE:
        return f"tenant '{job.tenant.slug}' is {job.tenant.status}"
    late = now - cron_run.scheduled_for
    if job.kind != CronJob.Kind.AT and late > timedelta(seconds=_conf("MISFIRE_GRACE_SECONDS")):
        return f"missed: woken {int(late.total_seconds())} s late (was beat running?)"
    if previous_running:
        return "the previous run of this job is still running"
    return ""


def _session_for(job: CronJob, cron_run: CronRun) -> AgentSession:
    if job.session_target == CronJob.SessionTarget.MAIN:
        return session_get_or_create(tenant=job.tenant, agent=job.agent, key="main")
    # A fresh session per run; ephemeral, so the engine closes it once the run ends (kept for audit).
    return AgentSession.objects.create(
        tenant=job.tenant, agent=job.agent, key=_isolated_session_key(job, cron_run), ephemeral=True
    )


def _isolated_session_key(job: CronJob, cron_run: CronRun) -> str:
    return f"cron:{job.pk}:{cron_run.pk}"


def _start(job: CronJob, cron_run: CronRun) -> CronRun:
    """Start a claimed occurrence's agent run and record it on the CronRun (or why it could not start).
    Called after the claim committed, holding no lock (module docstring)."""
    try:
        session = _session_for(job, cron_run)
        run = run_submit(session=session, content=[{"type": "text", "text": job.prompt}], trigger=Run.Trigger.CRON,
                         params=_RUN_PARAMS)
    except LimitExceeded as exc:
        return _not_started(job, cron_run, CronRun.Status.SKIPPED, exc.message)
    except (SessionClosed, SessionConflict) as exc:
        return _not_started(job, cron_run, CronRun.Status.FAILED, f"could not start the run: {exc}")
    with transaction.atomic():
        locked_job = CronJob.objects.select_for_update(of=("self",)).filter(pk=job.pk).first()
        locked = CronRun.objects.select_for_update().filter(pk=cron_run.pk).first() if locked_job else None
        if locked is None or locked.is_terminal:
            # Deleted with its job meanwhile (the run goes on, like any run in flight), or ended by the sweeper.
            return locked or cron_run
        # The CronRun's foreign keys are checked at commit with KEY SHARE locks, the run's before the
        # session's, while the engine locks a session, then its run: a worker ending the run in between
        # deadlocked with this commit once. Holding the session first keeps the engine's order.
        AgentSession.objects.select_for_update().filter(pk=session.pk).first()
        locked.session, locked.run = session, run
        locked.save(update_fields=["session", "run"])
    # A run that already ended sent its run_finished before this CronRun named it; settle it here.
    if Run.objects.filter(pk=run.pk, status__in=Run.TERMINAL_STATUSES).exists():
        return cron_run_settle(cron_run_id=locked.pk) or locked
    return locked


def _start_isolated(tenant: Tenant, claimed: list[tuple[CronJob, CronRun]]) -> None:
    """Start the runs of a tenant's claimed occurrences that each get a new session, in one transaction
    (runs_submit_isolated), and record them on the CronRuns in it. The sessions and runs are new, so no
    other transaction can hold them, and the lock order _start keeps for an existing session does not arise;
    the CronRuns' row locks come after the tenant row's, and nothing that holds a CronRun waits for that row.
    Occurrences whose runs could not start are ended, saying why."""
    try:
        with transaction.atomic():
            runs = runs_submit_isolated(
                tenant=tenant,
                turns=[(job.agent, _isolated_session_key(job, cron_run), [{"type": "text", "text": job.prompt}])
                       for job, cron_run in claimed],
                trigger=Run.Trigger.CRON,
                params=_RUN_PARAMS,
            )
            for (_, cron_run), run in zip(claimed, runs):
                cron_run.session_id, cron_run.run_id = run.session_id, run.pk
            # One statement (bulk_update's CASE costs ~1 ms a row to build); a CronRun ended meanwhile (the
            # sweeper) keeps its outcome.
            select_together((_claim_sql().started, [
                [c.pk for _, c in claimed], [c.session_id for _, c in claimed], [c.run_id for _, c in claimed],
                CronRun.Status.RUNNING,
            ]))
        return
    except LimitExceeded as exc:
        status, error = CronRun.Status.SKIPPED, exc.message
    except Exception as exc:  # noqa: BLE001 - the claims are committed: say why, rather than leave them running
        logger.exception("cron: %s claimed occurrences of tenant %s could not start", len(claimed), tenant.slug)
        status, error = CronRun.Status.FAILED, f"could not start the run: {exc}"
    for job, cron_run in claimed:
        ended = _not_started(job, cron_run, status, error)
        # (and not the run a rolled-back start had named)
        cron_run.status, cron_run.error, cron_run.run_id, cron_run.session_id = (
            ended.status, ended.error, ended.run_id, ended.session_id)


def _not_started(job: CronJob, cron_run: CronRun, status: str, error: str) -> CronRun:
    """End a claimed occurrence whose run could not start."""
    with transaction.atomic():
        locked_job = CronJob.objects.select_for_update(of=("self",)).select_related("tenant").filter(pk=job.pk).first()
        locked = CronRun.objects.select_for_update().filter(pk=cron_run.pk).first() if locked_job else None
        if locked is None or locked.is_terminal:
            return locked or cron_run
        _finish_locked(locked_job, locked, status, error)
        return locked


def _early_tolerance(job: CronJob) -> timedelta:
    if job.kind == CronJob.Kind.EVERY:
        return min(EARLY_TOLERANCE, timedelta(seconds=job.every_seconds) / 4)
    return EARLY_TOLERANCE


def _is_due(job: CronJob, now: datetime) -> bool:
    return job.enabled and job.next_run_at is not None and job.next_run_at <= now + _early_tolerance(job)


def cron_job_fire(*, job_id: int, woken_by: str) -> CronRun | None:
    """Run the job's due occurrence, if one is due and nobody ran it yet (beat and the sweeper call this).
    Its tenant's other due jobs are claimed and started with it (cron_job_fire_with_tenant)."""
    return next((cron_run for cron_run in cron_job_fire_with_tenant(job_id=job_id, woken_by=woken_by)
                 if cron_run.job_id == job_id), None)


def cron_jobs_fire(*, job_ids: list[int], woken_by: str) -> None:
    """cron_job_fire for each job, as if each had its own wake-up: the first one's claim takes the tenant's
    other due jobs along (cron_job_fire_with_tenant), and only those it did not (held by someone else for a
    moment, or past the claim's batch) are read again and go through their own claim."""
    claimed = _fire_guarded(job_ids[0], woken_by)
    # Those the first claim took along are done, unless beat may have woken them off their grid (`every`).
    done = {cron_run.job_id for cron_run in claimed if cron_run.job.kind != CronJob.Kind.EVERY}
    rest = [job_id for job_id in job_ids[1:] if job_id not in done]
    if not rest:
        return
    now = timezone.now()
    woken_by_beat = woken_by == CronRun.Trigger.BEAT
    jobs = {job.pk: job for job in _jobs_read(rest)}
    for job_id in rest:
        job = jobs.get(job_id)
        # (A job gone meanwhile goes through too: its wake-up removes a PeriodicTask beat re-inserted.)
        if job is None or _is_due(job, now) or (woken_by_beat and beat_needs_realign(job=job, woken_at=now)):
            _fire_guarded(job_id, woken_by)


def _fire_guarded(job_id: int, woken_by: str) -> list[CronRun]:
    """cron_job_fire_with_tenant where one job's failure must not stop the others' (beat's wake-up for
    several jobs, the sweep): it is logged. A store that is down still raises, for the caller to retry."""
    try:
        return cron_job_fire_with_tenant(job_id=job_id, woken_by=woken_by)
    except Exception as exc:  # noqa: BLE001 - see the docstring
        if outage_of(exc) is not None:
            raise
        logger.exception("cron job %s could not be fired (%s)", job_id, woken_by)
        return []


def cron_job_fire_with_tenant(*, job_id: int, woken_by: str) -> list[CronRun]:
    """Claim and start the job's due occurrence together with every other due occurrence of its tenant that
    no one else is claiming (up to FIRE_BATCH): when a thousand jobs fall due in the same second, each
    tenant's are claimed in one transaction and started in another, a few statements for them all, and
    their own wake-ups then find nothing to do. Returns the CronRuns claimed (skipped ones included)."""
    now = timezone.now()
    glance = next(iter(_jobs_read([job_id])), None)  # most wake-ups of a burst find their job claimed
    woken_by_beat = woken_by == CronRun.Trigger.BEAT
    if glance is not None and not _is_due(glance, now) and not (woken_by_beat and beat_needs_realign(job=glance, woken_at=now)):
        return []
    with transaction.atomic():
        # The others are skipped while someone else holds them: their own wake-up, or a change to the job.
        # (A job's tenant never changes, so the glance's names the others' before the job is locked.)
        job, others = _jobs_lock(job_id, tenant_id=glance.tenant_id if glance is not None else None,
                                 due_by=now + EARLY_TOLERANCE, limit=FIRE_BATCH - 1)
        if job is None:
            # A beat that was writing back a deleted job's last_run_at re-inserts its PeriodicTask (Django's
            # save falls back to INSERT when the UPDATE finds no row); the wake-up it sends removes it.
            beat_remove(job_id=job_id)
            return []
        if not _is_due(job, now):
            if job.enabled and job.next_run_at is not None and woken_by_beat and beat_needs_realign(job=job, woken_at=now):
                beat_sync(job=job, realign=True)
            return []
        jobs = [job, *(other for other in others if other.tenant_id == job.tenant_id and _is_due(other, now))]
        for other in jobs[1:]:
            other.tenant = job.tenant
        claimed = _claim_locked(jobs, now=now, trigger=woken_by)
        if job.next_run_at is not None and woken_by_beat and beat_needs_realign(job=job, woken_at=now):
            beat_sync(job=job, realign=True)
    # Logged before the runs start: starting binds each run's session to the log context, the last one's
    # would tag every line.
    for claimed_job, cron_run in claimed:
        logger.info("cron job %s: occurrence %s claimed (%s, %s)", claimed_job.pk, cron_run.scheduled_for.isoformat(),
                    woken_by, cron_run.status)
    _start_claimed(job.tenant, claimed, now)
    return [cron_run for _, cron_run in claimed]


class _ClaimSql:
    """The claim's statements, written out once (infra/rows.py: compiling them cost more than running them)."""

    def __init__(self):
        self.job, self.agent, self.tenant = Columns(CronJob, "j"), Columns(Agent, "a"), Columns(Tenant, "t")
        jobs, agents = CronJob._meta.db_table, Agent._meta.db_table
        self.read = f'SELECT {self.job.sql} FROM "{jobs}" j WHERE j.id = ANY(%s::bigint[])'
        self.lock = (
            f'SELECT {self.job.sql}, {self.agent.sql}, {self.tenant.sql} FROM "{jobs}" j '
            f'JOIN "{agents}" a ON a.id = j.agent_id JOIN "{Tenant._meta.db_table}" t ON t.id = j.tenant_id '
            "WHERE j.id = %s FOR UPDATE OF j"
        )
        self.others = (
            f'SELECT {self.job.sql}, {self.agent.sql} FROM "{jobs}" j JOIN "{agents}" a ON a.id = j.agent_id '
            "WHERE j.tenant_id = %s AND j.enabled AND j.next_run_at <= %s AND j.id <> %s "
            "ORDER BY j.next_run_at LIMIT %s FOR UPDATE OF j SKIP LOCKED"
        )
        self.claims = (
            f'SELECT job_id, scheduled_for, status FROM "{CronRun._meta.db_table}" '
            "WHERE job_id = ANY(%s::bigint[]) AND (scheduled_for = ANY(%s::timestamptz[]) OR status = %s)"
        )
        self.started = (
            f'UPDATE "{CronRun._meta.db_table}" AS c SET session_id = v.session_id, run_id = v.run_id '
            "FROM unnest(%s::bigint[], %s::uuid[], %s::uuid[]) AS v(id, session_id, run_id) "
            "WHERE c.id = v.id AND c.status = %s"
        )
        self.moved = f'UPDATE "{jobs}" SET next_run_at = %s, updated_at = %s WHERE id = ANY(%s::bigint[])'
        self.ran = (
            f'UPDATE "{jobs}" SET next_run_at = %s, updated_at = %s, last_run_at = %s, last_status = %s '
            "WHERE id = ANY(%s::bigint[])"
        )


@cache
def _claim_sql() -> _ClaimSql:
    return _ClaimSql()


def _jobs_read(job_ids: list[int]) -> list[CronJob]:
    sql = _claim_sql()
    return [sql.job.instance(row) for row in select_all(sql.read, [job_ids])]


def _jobs_lock(job_id: int, *, tenant_id, due_by: datetime, limit: int) -> tuple[CronJob | None, list[CronJob]]:
    """Lock the job (its agent and tenant loaded) and, with it in one round trip, up to `limit` other due
    jobs of `tenant_id` that no one else holds (their agents loaded)."""
    sql = _claim_sql()
    statements = [(sql.lock, [job_id])]
    if tenant_id is not None and limit > 0:
        statements.append((sql.others, [tenant_id, due_by, job_id, limit]))
    locked, *others = select_together(*statements)
    if not locked:
        return None, []
    job, job.agent, job.tenant = instances(locked[0], sql.job, sql.agent, sql.tenant)
    found = []
    for row in others[0] if others else []:
        other, other.agent = instances(row, sql.job, sql.agent)
        found.append(other)
    return job, found


def _claim_locked(jobs: list[CronJob], *, now: datetime, trigger: str) -> list[tuple[CronJob, CronRun]]:
    """One CronRun per job for its due occurrence, the jobs moved on to their next one; occurrences that
    cannot run are ended as skipped here. The caller holds every job's row lock, so no one else can claim
    these occurrences meanwhile."""
    next_at = {}
    computed: dict[tuple, datetime | None] = {}  # jobs due together mostly share a schedule: each is computed once
    for job in jobs:
        try:
            schedule, after = job.schedule, max(now, job.next_run_at)
            if (schedule, after) not in computed:
                computed[schedule, after] = schedule.next_after(after)
            next_at[job.pk] = computed[schedule, after]
        except Exception as exc:  # noqa: BLE001 - say, its zone left tzdata: it would fail every wake-up and sweep
            job.enabled = False
            job.disabled_reason = f"disabled: its next occurrence cannot be computed ({exc})"[:500]
            job.save(update_fields=["enabled", "disabled_reason", "updated_at"])
            logger.warning("cron job %s %s", job.pk, job.disabled_reason)
    jobs = [job for job in jobs if job.pk in next_at]
    due_at = {job.pk: job.next_run_at for job in jobs}
    # Claimed already: a job whose schedule was reset onto an occurrence claimed a moment early.
    taken, previous_running = set(), set()
    for job_id, scheduled_for, status in select_all(_claim_sql().claims, [
        list(due_at), list(set(due_at.values())), CronRun.Status.RUNNING
    ]):
        taken.add((job_id, scheduled_for))
        if status == CronRun.Status.RUNNING:
            previous_running.add(job_id)
    claiming = [job for job in jobs if (job.pk, due_at[job.pk]) not in taken]
    cron_runs = [
        CronRun(job=job, tenant_id=job.tenant_id, scheduled_for=due_at[job.pk], trigger=trigger) for job in claiming
    ]
    # Bookkeeping only, so no post_save is needed (cron.receivers). Jobs due together mostly share their next
    # occurrence too: one UPDATE per distinct next occurrence, sent with the CronRuns' INSERT.
    claiming_ids = {job.pk for job in claiming}
    updates: dict[tuple, list[int]] = {}
    for job in jobs:
        job.next_run_at = next_at[job.pk]
        job.updated_at = now
        if job.pk in claiming_ids:
            job.last_run_at, job.last_status = now, CronRun.Status.RUNNING
        updates.setdefault((job.next_run_at, job.pk in claiming_ids), []).append(job.pk)
    inserts = rows_insert_statements(cron_runs)
    results = select_together(*inserts, *(
        (_claim_sql().ran, [next_run_at, now, now, CronRun.Status.RUNNING, ids]) if claimed_now
        else (_claim_sql().moved, [next_run_at, now, ids])
        for (next_run_at, claimed_now), ids in updates.items()
    ))
    rows_inserted(cron_runs, [row for result in results[:len(inserts)] for row in result])
    claimed = list(zip(claiming, cron_runs))
    for job, cron_run in claimed:
        reason = _skip_reason(job, cron_run, now, previous_running=job.pk in previous_running)
        if reason:
            _finish_locked(job, cron_run, CronRun.Status.SKIPPED, reason)
    for job in jobs:
        if job.next_run_at is None:  # an `at` job ran its only occurrence
            job.enabled = False
            job.disabled_reason = f"ran once at {due_at[job.pk].isoformat()} ('at' schedule)"
            job.save(update_fields=["enabled", "disabled_reason", "updated_at"])
    return claimed


def _start_claimed(tenant: Tenant, claimed: list[tuple[CronJob, CronRun]], now: datetime) -> None:
    """Start the agent runs of claimed occurrences, after the claim committed (module docstring)."""
    starting = [(job, cron_run) for job, cron_run in claimed if not cron_run.is_terminal]
    for _, cron_run in starting:
        cron_lag_observe(tenant=tenant.slug, seconds=(now - cron_run.scheduled_for).total_seconds())
    isolated = [pair for pair in starting if pair[0].session_target == CronJob.SessionTarget.ISOLATED]
    if isolated:
        _start_isolated(tenant, isolated)
    for job, cron_run in starting:
        if job.session_target != CronJob.SessionTarget.ISOLATED:
            updated = _start(job, cron_run)
            cron_run.status, cron_run.error, cron_run.run_id = updated.status, updated.error, updated.run_id


def cron_job_run_now(*, job: CronJob) -> CronRun:
    """Run the job once now, whether or not it is enabled; its schedule is untouched."""
    now = timezone.now()
    with transaction.atomic():
        locked = CronJob.objects.select_for_update(of=("self",)).select_related("agent", "tenant").filter(pk=job.pk).first()
        if locked is None:
            raise CronJobGone()
        cron_run = CronRun.objects.create(
            job=locked, tenant_id=locked.tenant_id, scheduled_for=now, trigger=CronRun.Trigger.MANUAL
        )
        locked.last_run_at = now
        locked.last_status = CronRun.Status.RUNNING
        locked.save(update_fields=["last_run_at", "last_status", "updated_at"])
    return _start(locked, cron_run)


# --- settling -----------------------------------------------------------------------------------------------


def _finish_locked(job: CronJob, cron_run: CronRun, status: str, error: str = "") -> None:
    """End a CronRun and account for it on the job. Caller holds both row locks. A pending delivery is sent
    once the caller's transaction commits."""
    cron_run.status = status
    cron_run.error = error
    cron_run.finished_at = timezone.now()
    if job.deliver and status != CronRun.Status.SKIPPED:
        cron_run.delivery_status = CronRun.Delivery.PENDING
    cron_run.save(update_fields=["status", "error", "finished_at", "delivery_status"])
    job.last_status = status
    fields = ["last_status", "consecutive_errors", "updated_at"]
    if status == CronRun.Status.SUCCEEDED:
        job.consecutive_errors = 0
    elif status == CronRun.Status.FAILED:
        job.consecutive_errors += 1
        limit = _conf("MAX_CONSECUTIVE_ERRORS")
        if job.consecutive_errors >= limit and job.enabled:
            job.enabled = False
            job.disabled_reason = f"disabled after {job.consecutive_errors} consecutive errors; last: {error}"[:500]
            fields += ["enabled", "disabled_reason"]
            logger.warning("cron job %s %s", job.pk, job.disabled_reason)
    job.save(update_fields=fields)
    if cron_run.delivery_status == CronRun.Delivery.PENDING:
        # Sent by name: the task module (an edge) imports this one, not the other way round.
        cron_run_id, queue = cron_run.pk, tenant_queue(job.tenant.slug)
        transaction.on_commit(lambda: delivery_send(DELIVER_TASK, DELIVERY_KIND, cron_run_id, queue=queue))


def cron_run_settle(*, cron_run_id: int) -> CronRun | None:
    """Record the outcome of a CronRun whose agent run has ended (idempotent)."""
    job_id = CronRun.objects.filter(pk=cron_run_id).values_list("job_id", flat=True).first()
    if job_id is None:
        return None
    with transaction.atomic():
        job = CronJob.objects.select_for_update(of=("self",)).select_related("tenant").filter(pk=job_id).first()
        cron_run = CronRun.objects.select_for_update(of=("self",)).select_related("run").filter(pk=cron_run_id).first()
        if job is None or cron_run is None:  # deleted with its job meanwhile
            return None
        run = cron_run.run
        if cron_run.is_terminal or run is None or not run.is_terminal:
            return cron_run
        if run.status == Run.Status.SUCCEEDED:
            _finish_locked(job, cron_run, CronRun.Status.SUCCEEDED)
        else:
            _finish_locked(job, cron_run, CronRun.Status.FAILED, run.error or f"the run ended {run.status}")
    return cron_run


def _end_stuck(cron_run_id: int) -> Run | None:
    """Mark a CronRun past its job's timeout failed; returns the agent run to abort."""
    with transaction.atomic():
        job_id = CronRun.objects.filter(pk=cron_run_id).values_list("job_id", flat=True).first()
        job = CronJob.objects.select_for_update(of=("self",)).select_related("tenant").filter(pk=job_id).first()
        cron_run = CronRun.objects.select_for_update(of=("self",)).select_related("run").filter(pk=cron_run_id).first()
        if job is None or cron_run is None or cron_run.is_terminal:
            return None
        _finish_locked(
            job, cron_run, CronRun.Status.FAILED, f"stuck: no result after {job.timeout_seconds} s (the job's timeout)"
        )
        return cron_run.run


def cron_sweep(*, now: datetime | None = None) -> dict:
    """The safety net beside beat: fire occurrences beat did not wake, settle runs whose end was not
    heard (the signal is sent after commit and can be lost with its process), end runs past their timeout."""
    now = now or timezone.now()
    slack = timedelta(seconds=_conf("SWEEP_SLACK_SECONDS"))
    overdue = list(
        CronJob.objects.filter(enabled=True, next_run_at__lte=now - slack).order_by("next_run_at").values_list("pk", flat=True)[:500]
    )
    fired_jobs: set[int] = set()
    for pk in overdue:
        if pk in fired_jobs:  # claimed with an earlier overdue job of its tenant
            continue
        # (A store that is down raises: this sweep ends, the next one tries again, cron.tasks.)
        fired_jobs.update(r.job_id for r in _fire_guarded(pk, CronRun.Trigger.SWEEPER))
    fired = len(fired_jobs)
    settled = stuck = 0
    running = CronRun.objects.filter(status=CronRun.Status.RUNNING).order_by("started_at").values_list(
        "pk", "started_at", "job__timeout_seconds", "run__status", "run__finished_at"
    )[:1000]
    for pk, started_at, timeout_seconds, run_status, run_finished_at in running:
        # A terminal run without an end time (ended by hand, or by code older than the field) is long over.
        if run_status in Run.TERMINAL_STATUSES and (run_finished_at is None or run_finished_at < now - slack):
            settled += cron_run_settle(cron_run_id=pk) is not None
        elif now - started_at > timedelta(seconds=timeout_seconds):
            run = _end_stuck(pk)
            stuck += 1
            if run is not None and not run.is_terminal:
                run_abort(run=run, reason=f"cron: the job's timeout ({timeout_seconds} s) passed")
    # Deliveries whose chain of attempts was lost with its worker or with Redis: send them again.
    pending = list(
        CronRun.objects.filter(delivery_status=CronRun.Delivery.PENDING, finished_at__lt=now - slack)
        .values_list("pk", "tenant__slug")[:500]
    )
    lost = set(deliveries_unleased(DELIVERY_KIND, [pk for pk, _ in pending]))
    resent = sum(
        delivery_send(DELIVER_TASK, DELIVERY_KIND, pk, queue=tenant_queue(slug), only_if_free=True)
        for pk, slug in pending if pk in lost
    )
    if fired or settled or stuck or resent:
        logger.info("cron sweep: fired %s, settled %s, ended %s stuck, sent %s lost deliveries again", fired, settled,
                    stuck, resent)
    return {"fired": fired, "settled": settled, "stuck": stuck, "resent": resent}


def cron_run_queue(*, cron_run_id: int) -> str:
    """The queue a CronRun's work goes to: its tenant's."""
    slug = CronRun.objects.filter(pk=cron_run_id).values_list("tenant__slug", flat=True).first()
    return tenant_queue(slug) if slug else SYSTEM_QUEUE


# --- delivery -----------------------------------------------------------------------------------------------


def cron_run_deliver(*, cron_run_id: int) -> None:
    """One delivery attempt of a settled CronRun's reply, through its target's transport. Raises its
    TransientDeliveryError when the failure should be retried (and this was not the last of
    DELIVERY_ATTEMPTS)."""
    cron_run = CronRun.objects.select_related("job__agent", "run").filter(pk=cron_run_id).first()
    if cron_run is None or cron_run.delivery_status != CronRun.Delivery.PENDING:
        return
    final_attempt = cron_run.delivery_attempts + 1 >= _conf("DELIVERY_ATTEMPTS")
    job = cron_run.job
    payload = {
        "job": job.pk,
        "job_name": job.name,
        "agent": job.agent.slug,
        "cron_run": cron_run.pk,
        "scheduled_for": cron_run.scheduled_for.isoformat(),
        "trigger": cron_run.trigger,
        "status": cron_run.status,
        "text": cron_run_reply_text(cron_run=cron_run),
        "error": cron_run.error,
        "run_id": str(cron_run.run_id) if cron_run.run_id else None,
        "session_id": str(cron_run.session_id) if cron_run.session_id else None,
        "finished_at": cron_run.finished_at.isoformat() if cron_run.finished_at else None,
    }
    error: DeliveryError | None = None
    try:
        deliver_send(tenant_id=cron_run.tenant_id, target=job.deliver, payload=payload, delivery_id=f"cron-run-{cron_run.pk}")
    except DeliveryError as exc:
        error = exc
    retry = error is not None and error.transient and not final_attempt
    updates = {"delivery_attempts": cron_run.delivery_attempts + 1, "delivery_error": error.message if error else ""}
    if error is None:
        updates.update(delivery_status=CronRun.Delivery.DELIVERED, delivered_at=timezone.now())
    elif not retry:
        updates.update(delivery_status=CronRun.Delivery.FAILED)
    CronRun.objects.filter(pk=cron_run.pk, delivery_status=CronRun.Delivery.PENDING).update(**updates)
    if retry:
        raise error
