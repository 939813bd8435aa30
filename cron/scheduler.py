"""A django-celery-beat DatabaseScheduler that stays fast with thousands of entries.

Celery's `Scheduler.tick` compares the whole previous schedule with the current one, entry by entry, on
every tick, to notice changes. With one PeriodicTask per cron job that is O(jobs) per task sent: at
10,000 jobs beat sent about 11 tasks a second and fell minutes behind (docs/cron.md, benchmark). The
DatabaseScheduler already flags every reload of its schedule (`_heap_invalidated`), and between reloads its
entries only change by `reserve()` replacing one with its own next run, which leaves what the heap is built
from unchanged; so the flag alone answers the question in O(1).

Use it with `celery -A beamclaw_project beat -S cron.scheduler:CronScheduler`; it is a drop-in
replacement (same tables, same admin).

Celery's `tick` also reads the schedule before every task it sends, and each read asked the database
whether the schedule changed (a pool checkout, its check query, then the query itself): most of beat's
cost per task when a thousand are due at once, about 2 ms each, so the last of them left ~2 s after the
first. Here the question is asked at most once a second, and a tick that skipped it sleeps no longer than
until it may be asked again, so a change is still seen within about a second.

It also writes beat's heartbeat (infra/heartbeats.py) every few seconds from its tick, which runs at least
every `max_interval` (5 s) while beat lives, so `manage.py doctor` can say whether beat runs.

One wake-up per tenant and moment. The jobs of one tenant that fall due together (a thousand `* * * * *`
jobs at every minute) are claimed together anyway: the first wake-up's claim takes the tenant's other due
jobs along (cron/services.py). So the `cron.fire` entries beat finds due in one round of ticks are
collected by queue (the tenant's) and sent as one task naming them all, once nothing more is due: 100
messages rather than 1,000 for such a burst, which was two thirds of beat's work and as many tasks for the
worker, each reading its job only to find it claimed. A beat stopped between collecting and sending loses
those wake-ups as it would lose sent ones it had not yet written back: the sweeper claims the jobs late.
"""

import json
import logging
import time

from django_celery_beat.schedulers import DatabaseScheduler

from beamclaw_project.infra.heartbeats import BEAT_TTL_SECONDS, beat_heartbeat_write
from cron.beat import FIRE_TASK

logger = logging.getLogger(__name__)

SCHEDULE_CHECK_SECONDS = 1.0
WAKE_UP_MAX_JOBS = 200  # jobs named by one wake-up (the claim's own batch size, cron.services.FIRE_BATCH)


class CronScheduler(DatabaseScheduler):
    _heartbeat_due = 0.0
    _schedule_checked_at = float("-inf")
    _schedule_check_skipped = False

    def __init__(self, *args, **kwargs):
        # Wake-ups collected in this round of ticks: options (JSON) -> (job ids, the options to send with).
        self._wake_ups: dict[str, tuple[list[int], dict]] = {}
        super().__init__(*args, **kwargs)

    def tick(self, *args, **kwargs):
        now = time.monotonic()
        if now >= self._heartbeat_due:
            self._heartbeat_due = now + BEAT_TTL_SECONDS / 3
            try:
                beat_heartbeat_write()
            except Exception as exc:  # noqa: BLE001 - a Redis blip must not stop beat's schedule
                logger.warning("beat heartbeat not written: %s", exc)
        self._schedule_check_skipped = False
        delay = super().tick(*args, **kwargs)
        if delay > 0:  # nothing more is due now: send what this round of ticks collected
            self._wake_ups_send()
        if self._schedule_check_skipped:
            delay = min(delay, max(0.0, self._schedule_checked_at + SCHEDULE_CHECK_SECONDS - time.monotonic()))
        return delay

    def apply_entry(self, entry, producer=None):
        if entry.task != FIRE_TASK or len(entry.args) != 1 or entry.kwargs:
            return super().apply_entry(entry, producer=producer)
        # Entries that send alike (to the same queue, mostly) share a wake-up. Their headers name each
        # entry's PeriodicTask, which one message cannot.
        options = {name: value for name, value in entry.options.items() if name != "headers"}
        job_ids = self._wake_ups.setdefault(json.dumps(options, sort_keys=True, default=str), ([], options))[0]
        job_ids.append(entry.args[0])
        # Celery's own line for an entry it sends (operators and tests look for it); the message follows.
        logger.info("Scheduler: Sending due task %s (%s)", entry.name, entry.task)
        if len(job_ids) >= WAKE_UP_MAX_JOBS:
            self._wake_ups_send()
        return None

    def _wake_ups_send(self) -> None:
        collected = list(self._wake_ups.values())
        self._wake_ups.clear()
        for job_ids, options in collected:
            self._tasks_since_sync += len(job_ids)  # (what Scheduler.apply_async counts for its syncs)
            try:
                self.app.send_task(FIRE_TASK, args=[job_ids[0]], kwargs={"also": job_ids[1:]} if job_ids[1:] else {},
                                   producer=self.producer, headers={"celery_beat_task": True}, **options)
            except Exception as exc:  # noqa: BLE001 - as Celery's apply_entry: one failed send must not stop beat
                logger.error("cron: wake-up of jobs %s not sent (the sweeper will claim them late): %s", job_ids, exc)
            else:
                logger.info("cron: wake-up sent for %d job(s) (%s…)", len(job_ids), job_ids[0])

    def close(self):
        self._wake_ups_send()
        super().close()

    def schedules_equal(self, old_schedules, new_schedules):
        if self._heap_invalidated:
            self._heap_invalidated = False
            return False
        return old_schedules is not None and new_schedules is not None

    def schedule_changed(self):
        now = time.monotonic()
        if now - self._schedule_checked_at < SCHEDULE_CHECK_SECONDS:
            self._schedule_check_skipped = True
            return False
        self._schedule_checked_at = now
        return super().schedule_changed()
