"""Each job's django-celery-beat PeriodicTask, `cron-job-<id>`, kept in step with the job.

Beat is only the alarm clock: it sends `cron.fire(job_id)` to the job's tenant's queue (so one tenant's many
jobs wait behind each other, not in front of another tenant's: workers take turns between tenant queues),
and the fire task decides
from the job's own schedule which occurrence (if any) is due. So the PeriodicTask only has to wake the job
at (or around) each occurrence, never to be the source of truth:

- `at`: a ClockedSchedule at the instant, one-off.
- `every`: an IntervalSchedule. An interval has no anchor in django-celery-beat, so the row is created with
  `last_run_at` one interval before the next occurrence: beat's first wake-up lands on the job's grid and the
  following ones keep its rhythm (the fire task re-aligns the row if beat drifts off the grid).
- `cron`: a CrontabSchedule in the job's zone. Celery matches day-of-month AND day-of-week where cron ORs
  them, so when both are restricted beat is woken daily and the fire task picks the real days.

A row is replaced (new primary key) whenever the job's schedule or enabled flag changes. Replacing rather
than updating matters: a running beat writes its own `last_run_at` back to the row it knows by key, which
would otherwise undo the alignment above. Rows are only written when something changed, because every
write makes every beat reload its whole schedule.
"""

import json
from datetime import timedelta

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone
from django_celery_beat.models import ClockedSchedule, CrontabSchedule, IntervalSchedule, PeriodicTask

from beamclaw_project.infra.queues import tenant_queue
from cron import schedule as sched
from cron.models import CronJob

FIRE_TASK = "cron.fire"


def periodic_task_name(job_id) -> str:
    return f"cron-job-{job_id}"


def _signature(job: CronJob) -> str:
    """What the PeriodicTask is derived from; kept in its description to tell when it is stale."""
    return json.dumps(
        {"schedule": job.schedule.as_dict(), "enabled": job.enabled, "queue": tenant_queue(job.tenant.slug)},
        sort_keys=True,
    )


def _crontab_field(values, lo: int, hi: int) -> str:
    values = sorted(values)
    return "*" if values == list(range(lo, hi + 1)) else ",".join(map(str, values))


def _crontab(schedule: sched.Cron) -> CrontabSchedule:
    cron = schedule.parsed
    either_day = cron.days_restricted and cron.weekdays_restricted
    fields = {
        "minute": _crontab_field(cron.minutes, 0, 59),
        "hour": _crontab_field(cron.hours, 0, 23),
        "day_of_month": "*" if either_day else _crontab_field(cron.days, 1, 31),
        "month_of_year": _crontab_field(cron.months, 1, 12),
        "day_of_week": "*" if either_day else _crontab_field(cron.weekdays, 0, 6),
        "timezone": schedule.tz,
    }
    crontab = CrontabSchedule.objects.filter(**fields).first()
    return crontab or CrontabSchedule.objects.create(**fields)


def _interval(seconds: int) -> IntervalSchedule:
    interval = IntervalSchedule.objects.filter(every=seconds, period=IntervalSchedule.SECONDS).first()
    return interval or IntervalSchedule.objects.create(every=seconds, period=IntervalSchedule.SECONDS)


def beat_sync(*, job: CronJob, realign: bool = False) -> None:
    """Bring `next_run_at` and the PeriodicTask in line with the job's schedule and enabled flag, if either
    changed since the last sync (runs on every save of a job: cron.receivers). `realign` replaces the
    PeriodicTask of an unchanged job so beat's wake-ups land on its grid again."""
    name = periodic_task_name(job.pk)
    signature = _signature(job)
    existing = PeriodicTask.objects.filter(name=name).first()
    if not realign:
        if existing is not None and existing.description == signature:
            return
        job.next_run_at = job.schedule.next_after(timezone.now()) if job.enabled else None
        CronJob.objects.filter(pk=job.pk).update(next_run_at=job.next_run_at)
    if not (job.enabled and job.next_run_at):
        if existing is not None:
            existing.enabled = False
            existing.description = signature
            existing.save()
        return
    schedule = job.schedule
    fields = {"name": name, "task": FIRE_TASK, "args": json.dumps([job.pk]), "queue": tenant_queue(job.tenant.slug),
              "description": signature, "enabled": True}
    if isinstance(schedule, sched.At):
        fields.update(clocked=ClockedSchedule.objects.create(clocked_time=schedule.at), one_off=True)
    elif isinstance(schedule, sched.Every):
        fields.update(interval=_interval(schedule.seconds), last_run_at=job.next_run_at - schedule.interval)
    else:
        fields.update(crontab=_crontab(schedule))
    _replace(name, job.pk, fields)


def _replace(name: str, job_id, fields: dict) -> None:
    """Replace the job's PeriodicTask by a new row. Callers hold the job's row lock, so only a beat writing
    back a row it still has in memory can put one with this name in between; that row is dropped too."""
    for attempt in (1, 2):
        beat_remove(job_id=job_id)
        try:
            with transaction.atomic():
                PeriodicTask.objects.create(**fields)
            return
        except (IntegrityError, ValidationError):  # the name is taken: unique constraint or validate_unique
            if attempt == 2:
                raise


def beat_remove(*, job_id) -> None:
    task = PeriodicTask.objects.filter(name=periodic_task_name(job_id)).select_related("clocked").first()
    if task is None:
        return
    clocked = task.clocked
    task.delete()
    if clocked is not None and not PeriodicTask.objects.filter(clocked=clocked).exists():
        clocked.delete()


def _off_grid(job: CronJob, moment, tolerance: timedelta) -> bool:
    interval = timedelta(seconds=job.every_seconds)
    offset = (moment - job.anchor) % interval
    return min(offset, interval - offset) > tolerance


def beat_needs_realign(*, job: CronJob, woken_at) -> bool:
    """Whether beat woke an `every` job off its grid (it started late, or drifted: beat counts each
    interval from when it last sent the task) and its PeriodicTask is not already replaced by an aligned
    one that beat has yet to load."""
    if job.kind != CronJob.Kind.EVERY:
        return False
    tolerance = min(timedelta(seconds=2), timedelta(seconds=job.every_seconds) / 4)
    if not _off_grid(job, woken_at, tolerance):
        return False
    stored = PeriodicTask.objects.filter(name=periodic_task_name(job.pk)).values_list("last_run_at", flat=True).first()
    return stored is None or _off_grid(job, stored, tolerance)
