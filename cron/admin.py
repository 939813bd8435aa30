"""Cron jobs and their runs in the Django admin: the one place an operator edits a schedule.

A job's PeriodicTask (cron/beat.py) is derived from the job on every save; edited on its own it would drift
from the job until the next save overwrote it, so django-celery-beat's admin is taken out (docs/admin.md).

A run's status says whether the agent run succeeded; whether its reply reached the job's `deliver` target
is a second outcome (cron/services.py records it on the CronRun). Both are shown side by side, in the job
list (for the last run) and in the history, so a failed delivery never hides behind `succeeded`.
"""

import django_celery_beat.admin  # noqa: F401  registers beat's models, so they can be unregistered below
from django import forms
from django.contrib import admin, messages
from django.db.models import OuterRef, Subquery
from django.utils import timezone
from django.utils.html import format_html
from django_celery_beat.models import ClockedSchedule, CrontabSchedule, IntervalSchedule, PeriodicTask, SolarSchedule

from cron.delivery import DeliveryTargetError, deliver_parse
from cron.models import CronJob, CronRun
from cron.schedule import ScheduleError, duration_format, schedule_parse
from cron.services import CronJobInvalid, cron_job_create, cron_job_run_now, cron_job_set_enabled, cron_job_update
from tenants.models import Agent

for beat_model in (PeriodicTask, IntervalSchedule, CrontabSchedule, SolarSchedule, ClockedSchedule):
    admin.site.unregister(beat_model)

SCHEDULE_FIELDS = ("kind", "at", "every", "anchor", "expr", "tz")


class CronJobForm(forms.ModelForm):
    """The schedule is typed as in the API (`every` as '1h30m') and parsed by the same code."""

    every = forms.CharField(required=False, help_text="every: '30s', '15m', '2h', '1d', '1h30m'.")

    class Meta:
        model = CronJob
        fields = [
            "tenant", "agent", "name", "prompt", "session_target", "kind", "at", "every", "anchor", "expr", "tz",
            "deliver", "enabled", "timeout_seconds",
        ]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.every_seconds:
            self.initial["every"] = duration_format(self.instance.every_seconds)
        if self.instance.pk is not None and "agent" in self.fields:
            # A job runs one of its tenant's agents: only those are offered.
            self.fields["agent"].queryset = Agent.objects.filter(tenant=self.instance.tenant_id)
        self.parsed_schedule = None

    def clean(self):
        data = super().clean()
        agent, tenant = data.get("agent"), data.get("tenant")
        if agent and tenant and agent.tenant_id != tenant.pk:
            self.add_error("agent", f"Agent {agent} does not belong to tenant {tenant}.")
        if self.instance.pk is None or set(SCHEDULE_FIELDS) & set(self.changed_data):
            kind = data.get("kind")
            raw = {"kind": kind}
            for name in {"at": ("at", "tz"), "every": ("every", "anchor"), "cron": ("expr", "tz")}.get(kind, ()):
                if data.get(name) not in (None, ""):
                    raw[name] = data[name].isoformat() if hasattr(data[name], "isoformat") else data[name]
            try:
                self.parsed_schedule = schedule_parse(raw, now=timezone.now())
            except ScheduleError as exc:
                self.add_error(exc.field if exc.field in self.fields else None, exc.message)
        try:
            data["deliver"] = deliver_parse(data.get("deliver"), tenant=tenant or getattr(self.instance, "tenant", None))
        except DeliveryTargetError as exc:
            self.add_error("deliver", str(exc))
        return data


def delivery_html(status: str, error: str):
    """A delivery's outcome as the list shows it: nothing when none was asked for, a failure in red with why."""
    if status in ("", CronRun.Delivery.NOT_REQUESTED):
        return "-"
    if status == CronRun.Delivery.FAILED:
        return format_html('<span style="color: var(--error-fg)">delivery failed</span>{}', f": {error}" if error else "")
    return "delivered" if status == CronRun.Delivery.DELIVERED else "delivery pending"


class CronRunInline(admin.TabularInline):
    model = CronRun
    extra = 0
    fields = ("scheduled_for", "trigger", "status", "delivery", "started_at", "finished_at", "error", "run")
    readonly_fields = fields
    can_delete = False
    show_change_link = True
    ordering = ("-scheduled_for",)
    max_num = 0

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("run")

    @admin.display(description="delivery")
    def delivery(self, obj):
        return delivery_html(obj.delivery_status, obj.delivery_error)


@admin.register(CronJob)
class CronJobAdmin(admin.ModelAdmin):
    form = CronJobForm
    # Few and narrow columns: the last run's outcome must be visible on a laptop without scrolling sideways.
    list_display = ("name", "agent", "schedule_text", "enabled", "next_run_at", "last_run", "consecutive_errors")
    list_filter = ("tenant", "enabled", "kind", "session_target", "last_status")
    search_fields = ("name", "agent__slug", "tenant__slug", "expr")
    list_select_related = ("agent__tenant",)
    readonly_fields = ("next_run_at", "last_run_at", "last_status", "consecutive_errors", "disabled_reason",
                       "created_at", "updated_at")
    actions = ["enable_jobs", "disable_jobs", "run_now"]
    inlines = [CronRunInline]

    def get_queryset(self, request):
        last_run = CronRun.objects.filter(job=OuterRef("pk")).order_by("-scheduled_for", "-id")
        return super().get_queryset(request).annotate(
            last_delivery_status=Subquery(last_run.values("delivery_status")[:1]),
            last_delivery_error=Subquery(last_run.values("delivery_error")[:1]),
        )

    @admin.display(description="last run")
    def last_run(self, obj):
        delivery = delivery_html(obj.last_delivery_status or "", (obj.last_delivery_error or "")[:120])
        if not obj.last_status:
            return "-"
        return obj.last_status if delivery == "-" else format_html("{}<br>{}", obj.last_status, delivery)

    @admin.display(description="schedule")
    def schedule_text(self, obj):
        if obj.schedule_unreadable:
            return f"unreadable {obj.kind} schedule"
        if obj.kind == CronJob.Kind.EVERY:
            return f"every {duration_format(obj.every_seconds)}"  # the anchor is on the job's page
        if obj.kind == CronJob.Kind.AT:
            return f"at {obj.at:%Y-%m-%d %H:%M:%S %Z}"
        return f"{obj.expr} {obj.tz}"

    def save_model(self, request, obj, form, change):
        fields = {
            "agent": form.cleaned_data["agent"], "name": obj.name, "prompt": obj.prompt,
            "session_target": obj.session_target, "deliver": form.cleaned_data["deliver"],
            "timeout_seconds": obj.timeout_seconds,
        }
        if form.parsed_schedule is not None:
            fields["schedule"] = form.parsed_schedule
        try:
            if change:
                if "enabled" in form.changed_data:
                    fields["enabled"] = obj.enabled
                cron_job_update(job=obj, changes=fields)
            else:
                job = cron_job_create(tenant=form.cleaned_data["tenant"], enabled=obj.enabled, **fields)
                obj.pk = job.pk
        except CronJobInvalid as exc:
            messages.error(request, exc.message)

    def _each(self, request, queryset, verb: str, change) -> None:
        done = 0
        for job in queryset:
            try:
                change(job)
                done += 1
            except CronJobInvalid as exc:
                messages.error(request, f"{job}: {exc.message}")
        if done:
            messages.success(request, f"{verb} {done} job(s).")

    @admin.action(description="Enable (resets the error count)")
    def enable_jobs(self, request, queryset):
        self._each(request, queryset, "Enabled", lambda job: cron_job_set_enabled(job=job, enabled=True))

    @admin.action(description="Disable")
    def disable_jobs(self, request, queryset):
        self._each(request, queryset, "Disabled", lambda job: cron_job_set_enabled(job=job, enabled=False))

    @admin.action(description="Run now")
    def run_now(self, request, queryset):
        self._each(request, queryset, "Started", lambda job: cron_job_run_now(job=job))


@admin.register(CronRun)
class CronRunAdmin(admin.ModelAdmin):
    list_display = ("job", "scheduled_for", "trigger", "status", "delivery", "started_at", "finished_at")
    list_filter = ("tenant", "status", "delivery_status", "trigger")
    search_fields = ("job__name", "job__agent__slug", "error")
    list_select_related = ("job__agent__tenant",)
    readonly_fields = [f.name for f in CronRun._meta.fields]

    @admin.display(description="delivery")
    def delivery(self, obj):
        return delivery_html(obj.delivery_status, obj.delivery_error)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
