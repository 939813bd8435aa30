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
"""

import logging
import time

from django_celery_beat.schedulers import DatabaseScheduler

from beamclaw_project.infra.heartbeats import BEAT_TTL_SECONDS, beat_heartbeat_write

logger = logging.getLogger(__name__)

SCHEDULE_CHECK_SECONDS = 1.0


class CronScheduler(DatabaseScheduler):
    _heartbeat_due = 0.0
    _schedule_checked_at = float("-inf")
    _schedule_check_skipped = False

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
        if self._schedule_check_skipped:
            delay = min(delay, max(0.0, self._schedule_checked_at + SCHEDULE_CHECK_SECONDS - time.monotonic()))
        return delay

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
