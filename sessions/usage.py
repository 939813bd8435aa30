"""Usage and fleet figures per tenant, for the operators' dashboard.

Each figure is one aggregate query over a bounded window, grouped in Postgres (date_trunc in UTC), for
every tenant asked about at once: a page costs the same handful of queries for one tenant or fifty.
The run table's (tenant, created_at) and (tenant, status) indexes serve them with `tenant_id IN (...)`.

Tokens are counted where the daily budget counts them (sessions/runs/budget.py): each run's counters,
on the UTC day the run was created (a run that crosses midnight counts on its first day; a manual
compaction, which has no run, is not in them). Failures are runs that ended failed or aborted, also by
the day they were created.

The fleet's workers are the heartbeats in Redis (infra/heartbeats.py): a worker is listed while its
heartbeat lives, which is three housekeeping ticks after its last one. A heartbeat records only the
process's incarnation; when it was written follows from its remaining lifetime and the housekeeping
interval, which the whole fleet reads from the same setting.
"""

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from datetime import timezone as dt_timezone

from django.conf import settings
from django.db.models import Count, F, Q, Sum, Window
from django.db.models.functions import RowNumber, TruncDay, TruncMinute
from django.utils import timezone

from beamclaw_project.infra.heartbeats import KEY_PREFIX, heartbeat_ttl_seconds
from beamclaw_project.infra.queues import SYSTEM_QUEUE, queue_depths, tenant_queue
from beamclaw_project.infra.redis import redis_client
from sessions.models import Run
from tenants.models import Tenant
from tools.models import Approval

USAGE_DAYS = 14
USAGE_MINUTES = 60
LATEST_FAILURES = 5


@dataclass(frozen=True)
class DayUsage:
    day: date
    input_tokens: int = 0
    output_tokens: int = 0
    runs: int = 0
    failed: int = 0
    aborted: int = 0

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True)
class MinuteRuns:
    minute: datetime
    runs: int = 0


@dataclass(frozen=True)
class Failure:
    run_id: str
    status: str
    error_code: str
    error: str
    session_key: str
    created_at: datetime


@dataclass(frozen=True)
class TenantUsage:
    tenant: Tenant
    days: list[DayUsage]  # oldest first, one per day of the window, idle days included
    minutes: list[MinuteRuns]  # oldest first, one per minute of the window
    failures: list[Failure]  # newest first

    @property
    def input_tokens(self) -> int:
        return sum(day.input_tokens for day in self.days)

    @property
    def output_tokens(self) -> int:
        return sum(day.output_tokens for day in self.days)

    @property
    def runs(self) -> int:
        return sum(day.runs for day in self.days)

    @property
    def failed(self) -> int:
        return sum(day.failed + day.aborted for day in self.days)

    @property
    def runs_last_hour(self) -> int:
        return sum(minute.runs for minute in self.minutes)


def tenant_usage_list(*, tenants: list[Tenant], now: datetime | None = None) -> list[TenantUsage]:
    """Tokens and runs per day over the last USAGE_DAYS UTC days (today included), runs per minute over
    the last USAGE_MINUTES minutes, and the latest failures of those days, for each tenant given. Three
    queries whatever the number of tenants."""
    now = now or timezone.now()
    today = now.astimezone(dt_timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    first_day = today - timedelta(days=USAGE_DAYS - 1)
    this_minute = now.replace(second=0, microsecond=0)
    first_minute = this_minute - timedelta(minutes=USAGE_MINUTES - 1)
    ids = [tenant.pk for tenant in tenants]
    recent = Run.objects.filter(tenant_id__in=ids, created_at__gte=first_day)

    per_day = (
        recent.annotate(day=TruncDay("created_at", tzinfo=dt_timezone.utc))
        .values("tenant_id", "day")
        .annotate(
            input_tokens=Sum("input_tokens"),
            output_tokens=Sum("output_tokens"),
            runs=Count("id"),
            failed=Count("id", filter=Q(status=Run.Status.FAILED)),
            aborted=Count("id", filter=Q(status=Run.Status.ABORTED)),
        )
        .order_by()
    )
    days: dict[tuple[int, date], DayUsage] = {
        (row["tenant_id"], row["day"].date()): DayUsage(
            day=row["day"].date(), input_tokens=row["input_tokens"], output_tokens=row["output_tokens"],
            runs=row["runs"], failed=row["failed"], aborted=row["aborted"],
        )
        for row in per_day
    }

    per_minute = (
        Run.objects.filter(tenant_id__in=ids, created_at__gte=first_minute)
        .annotate(minute=TruncMinute("created_at", tzinfo=dt_timezone.utc))
        .values("tenant_id", "minute")
        .annotate(runs=Count("id"))
        .order_by()
    )
    minutes = {(row["tenant_id"], row["minute"]): row["runs"] for row in per_minute}

    # The newest few failures of each tenant in one query: rank within each tenant, keep the first ranks.
    latest = (
        recent.filter(status__in=(Run.Status.FAILED, Run.Status.ABORTED))
        .annotate(rank=Window(RowNumber(), partition_by=F("tenant_id"), order_by=F("created_at").desc()))
        .filter(rank__lte=LATEST_FAILURES)
        .values("id", "tenant_id", "status", "error_code", "error", "session__key", "created_at")
        .order_by("tenant_id", "-created_at")
    )
    failures: dict[int, list[Failure]] = {}
    for row in latest:
        failures.setdefault(row["tenant_id"], []).append(Failure(
            run_id=str(row["id"]), status=row["status"], error_code=row["error_code"], error=row["error"],
            session_key=row["session__key"], created_at=row["created_at"],
        ))

    day_list = [(first_day + timedelta(days=i)).date() for i in range(USAGE_DAYS)]
    minute_list = [first_minute + timedelta(minutes=i) for i in range(USAGE_MINUTES)]
    return [
        TenantUsage(
            tenant=tenant,
            days=[days.get((tenant.pk, day)) or DayUsage(day=day) for day in day_list],
            minutes=[MinuteRuns(minute=minute, runs=minutes.get((tenant.pk, minute), 0)) for minute in minute_list],
            failures=failures.get(tenant.pk, []),
        )
        for tenant in tenants
    ]


@dataclass(frozen=True)
class Worker:
    node: str
    incarnation: str
    last_seen: datetime
    expires_in_seconds: float  # until the heartbeat lapses unless the worker beats again


@dataclass(frozen=True)
class TenantLoad:
    tenant: Tenant
    queue: str
    queue_depth: int
    queued: int
    running: int
    awaiting_approval: int
    pending_approvals: int


@dataclass(frozen=True)
class FleetStatus:
    workers: list[Worker]
    system_queue_depth: int
    tenants: list[TenantLoad]


def workers_alive() -> list[Worker]:
    """The workers whose heartbeat lives, by node name; one scan and one pipelined read."""
    client = redis_client()
    keys = sorted(client.scan_iter(match=f"{KEY_PREFIX}*", count=1000))
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.get(key).pttl(key)
    values = pipe.execute() if keys else []
    now = timezone.now()
    lifetime = heartbeat_ttl_seconds(settings.BEAMCLAW["HOUSEKEEPING_SECONDS"])
    workers = []
    for key, incarnation, ttl_ms in zip(keys, values[::2], values[1::2]):
        if incarnation is None:  # lapsed between the scan and the read
            continue
        expires_in = max(ttl_ms, 0) / 1000
        workers.append(Worker(
            node=key.decode()[len(KEY_PREFIX):], incarnation=incarnation.decode(),
            last_seen=now - timedelta(seconds=max(lifetime - expires_in, 0)), expires_in_seconds=expires_in,
        ))
    return workers


def fleet_status_get(*, tenants: list[Tenant]) -> FleetStatus:
    """Live workers, the depth of the system queue and of each tenant's queue, and each tenant's runs in
    progress and pending approvals. Two queries and two Redis round trips (plus the heartbeat scan)."""
    ids = [tenant.pk for tenant in tenants]
    runs: dict[tuple[int, str], int] = {
        (row["tenant_id"], row["status"]): row["n"]
        for row in Run.objects.filter(
            tenant_id__in=ids, status__in=(Run.Status.QUEUED, *Run.ACTIVE_STATUSES)
        ).values("tenant_id", "status").annotate(n=Count("id")).order_by()
    }
    approvals: dict[int, int] = dict(
        Approval.objects.filter(tenant_id__in=ids, status=Approval.Status.PENDING)
        .values("tenant_id").annotate(n=Count("id")).values_list("tenant_id", "n").order_by()
    )
    depths = queue_depths(tenant_slugs=[tenant.slug for tenant in tenants])
    return FleetStatus(
        workers=workers_alive(),
        system_queue_depth=depths[SYSTEM_QUEUE],
        tenants=[
            TenantLoad(
                tenant=tenant, queue=tenant_queue(tenant.slug), queue_depth=depths[tenant_queue(tenant.slug)],
                queued=runs.get((tenant.pk, Run.Status.QUEUED), 0),
                running=runs.get((tenant.pk, Run.Status.RUNNING), 0),
                awaiting_approval=runs.get((tenant.pk, Run.Status.AWAITING_APPROVAL), 0),
                pending_approvals=approvals.get(tenant.pk, 0),
            )
            for tenant in tenants
        ],
    )
