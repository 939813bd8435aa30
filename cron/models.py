from django.db import models
from django.db.models import Q

from cron import schedule as sched
from sessions.models import AgentSession, Run
from tenants.models import Agent, Tenant


class CronJob(models.Model):
    """An agent's scheduled prompt. Beat wakes it through its PeriodicTask `cron-job-<id>` (cron/beat.py);
    `next_run_at` is the occurrence the next wake-up will claim (None while disabled or after an `at`)."""

    class Kind(models.TextChoices):
        AT = "at"
        EVERY = "every"
        CRON = "cron"

    class SessionTarget(models.TextChoices):
        MAIN = "main", "the agent's main session"
        ISOLATED = "isolated", "a fresh session per run"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="cron_jobs")
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="cron_jobs")
    name = models.CharField(max_length=200)
    prompt = models.TextField()
    session_target = models.CharField(max_length=16, choices=SessionTarget.choices, default=SessionTarget.MAIN)
    kind = models.CharField(max_length=8, choices=Kind.choices)
    at = models.DateTimeField(null=True, blank=True, help_text="`at`: the instant.")
    every_seconds = models.PositiveIntegerField(null=True, blank=True, help_text="`every`: the interval.")
    anchor = models.DateTimeField(null=True, blank=True, help_text="`every`: runs at anchor + k × interval.")
    expr = models.CharField(max_length=200, blank=True, help_text="`cron`: five fields or a macro.")
    tz = models.CharField(max_length=64, default="UTC", help_text="`cron`: IANA time zone.")
    deliver = models.JSONField(null=True, blank=True, help_text='e.g. {"kind": "webhook", "url": "https://…"}')
    enabled = models.BooleanField(default=True)
    timeout_seconds = models.PositiveIntegerField(help_text="A run still going after this long is marked failed.")
    next_run_at = models.DateTimeField(null=True, blank=True)
    last_run_at = models.DateTimeField(null=True, blank=True)
    last_status = models.CharField(max_length=16, blank=True)
    consecutive_errors = models.PositiveIntegerField(default=0)
    disabled_reason = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            models.UniqueConstraint(fields=["agent", "name"], name="cronjob_unique_name_per_agent"),
            models.CheckConstraint(
                condition=(
                    Q(kind="at", at__isnull=False)
                    | Q(kind="every", every_seconds__gt=0, anchor__isnull=False)
                    | (Q(kind="cron") & ~Q(expr=""))
                ),
                name="cronjob_schedule_complete",
            ),
        ]
        indexes = [
            models.Index(fields=["tenant", "created_at"]),
            # The sweeper's "overdue" query.
            models.Index(fields=["next_run_at"], condition=Q(enabled=True), name="cronjob_due"),
        ]
        verbose_name = "cron job"

    def __str__(self) -> str:
        return f"{self.agent}/{self.name}"

    @property
    def schedule(self) -> sched.Schedule:
        if self.kind == self.Kind.AT:
            return sched.At(at=self.at)
        if self.kind == self.Kind.EVERY:
            return sched.Every(seconds=self.every_seconds, anchor=self.anchor)
        text, parsed = sched.cron_parse(self.expr)
        return sched.Cron(expr=text, tz=self.tz, parsed=parsed)

    @property
    def schedule_unreadable(self) -> bool:
        """A row without its kind's values (written around the services, say): nothing can be computed from it,
        and the sweeper disables it, but the admin and the dashboard still list it."""
        return (
            (self.kind == self.Kind.AT and self.at is None) or (self.kind == self.Kind.EVERY and self.every_seconds is None)
            or (self.kind == self.Kind.CRON and not self.expr)
        )

    @schedule.setter
    def schedule(self, value: sched.Schedule) -> None:
        self.kind = value.kind
        self.at = value.at if isinstance(value, sched.At) else None
        self.every_seconds = value.seconds if isinstance(value, sched.Every) else None
        self.anchor = value.anchor if isinstance(value, sched.Every) else None
        self.expr = value.expr if isinstance(value, sched.Cron) else ""
        self.tz = value.tz if isinstance(value, sched.Cron) else "UTC"


class CronRun(models.Model):
    """One occurrence of a job. The row is the claim: unique per (job, scheduled_for), so an occurrence
    woken twice (two beats, a redelivered task, the sweeper) runs once."""

    class Status(models.TextChoices):
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        SKIPPED = "skipped"

    class Trigger(models.TextChoices):
        BEAT = "beat", "beat woke it on schedule"
        SWEEPER = "sweeper", "the sweeper caught a wake-up beat missed"
        MANUAL = "manual", "run now"

    class Delivery(models.TextChoices):
        NOT_REQUESTED = "not_requested"
        PENDING = "pending"
        DELIVERED = "delivered"
        FAILED = "failed"

    TERMINAL_STATUSES = (Status.SUCCEEDED, Status.FAILED, Status.SKIPPED)

    job = models.ForeignKey(CronJob, on_delete=models.CASCADE, related_name="runs")
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="cron_runs")
    scheduled_for = models.DateTimeField()
    trigger = models.CharField(max_length=16, choices=Trigger.choices)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.RUNNING)
    started_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)
    run = models.ForeignKey(Run, null=True, blank=True, on_delete=models.SET_NULL, related_name="cron_runs")
    session = models.ForeignKey(AgentSession, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    delivery_status = models.CharField(max_length=16, choices=Delivery.choices, default=Delivery.NOT_REQUESTED)
    delivery_attempts = models.PositiveIntegerField(default=0)
    delivery_error = models.TextField(blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-scheduled_for", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["job", "scheduled_for"], name="cronrun_one_claim_per_occurrence"),
        ]
        indexes = [
            models.Index(fields=["job", "-scheduled_for"]),
            models.Index(fields=["started_at"], condition=Q(status="running"), name="cronrun_running"),
        ]
        verbose_name = "cron run"

    def __str__(self) -> str:
        return f"{self.job} @ {self.scheduled_for:%Y-%m-%d %H:%M:%S} ({self.status})"

    @property
    def is_terminal(self) -> bool:
        return self.status in self.TERMINAL_STATUSES
