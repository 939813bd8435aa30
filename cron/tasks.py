"""Thin Celery tasks: they take ids and call a service; and the sweeper's start, which is not a task.

A job's own work (fire, settle, deliver) is sent to its tenant's queue, so one tenant's many jobs or slow
webhooks queue behind each other and not in front of another tenant's; the `queue` below is only the
default for a task sent without one.

The sweeper is started by the workers' housekeeping (cron/apps.py), once per fleet per period, on the
worker that wins the period. It runs there on a thread of its own rather than as a task: as a task it put
a `cron.sweep` line in Flower every five seconds, burying the tenants' work; and not on the housekeeping
thread itself, because a sweep with much to catch up on (hundreds of overdue jobs after an outage) may
take seconds, and that thread writes the heartbeats other workers judge this one alive by.

The worker runs a thread pool, where Celery cannot enforce time limits; every task here is a few queries,
and a webhook call is bounded by BEAMCLAW_CRON_DELIVERY_TIMEOUT_SECONDS. Deliveries are retried here, as the
transport contract asks of callers (channels_app/transport.py).
"""

import logging
import threading

from celery import shared_task
from django.conf import settings
from django.db import connections

from beamclaw_project.infra.deliveries import delivery_attempt
from beamclaw_project.infra.outages import outage_of
from beamclaw_project.infra.queues import SYSTEM_QUEUE
from channels_app.transport import TransientDeliveryError, retry_countdown
from cron import services
from cron.models import CronRun

logger = logging.getLogger(__name__)


@shared_task(name="cron.fire", queue=SYSTEM_QUEUE, acks_late=True, ignore_result=True)
def fire(job_id: int, also: list[int] = ()) -> None:
    """Sent by beat (the job's PeriodicTask `cron-job-<id>`); `also`: more jobs of the same tenant that fell
    due with it (cron/scheduler.py sends one wake-up for them)."""
    services.cron_jobs_fire(job_ids=[job_id, *also], woken_by=CronRun.Trigger.BEAT)


@shared_task(name="cron.settle", queue=SYSTEM_QUEUE, acks_late=True, ignore_result=True)
def settle(cron_run_id: int) -> None:
    services.cron_run_settle(cron_run_id=cron_run_id)


_sweeping = threading.Lock()  # at most one sweep at a time in this process


def sweep_start() -> None:
    """The housekeeping chore that starts a sweep (cron/apps.py), unless this process's last one still runs."""
    if not _sweeping.acquire(blocking=False):
        return
    try:
        threading.Thread(target=_sweep, name="cron-sweep", daemon=True).start()
    except BaseException:
        _sweeping.release()
        raise


def _sweep() -> None:
    try:
        services.cron_sweep()
    except Exception as exc:  # noqa: BLE001 - the next period sweeps again
        if (store := outage_of(exc)) is not None:
            logger.warning("cron sweep skipped: %s is unavailable (%s)", store, exc)
        else:
            logger.exception("cron sweep failed")
    finally:
        connections.close_all()  # this thread's own connections
        _sweeping.release()


@shared_task(name=services.DELIVER_TASK, bind=True, queue=SYSTEM_QUEUE, acks_late=True, ignore_result=True, max_retries=None)
def deliver(self, cron_run_id: int) -> None:
    base = settings.BEAMCLAW_CRON["DELIVERY_RETRY_BASE_SECONDS"]
    delivery_attempt(
        self, services.DELIVERY_KIND, cron_run_id, lambda: services.cron_run_deliver(cron_run_id=cron_run_id),
        retry_on=(TransientDeliveryError,),
        countdown=lambda exc: retry_countdown(retries=self.request.retries, base_seconds=base, error=exc),
        queue=services.cron_run_queue(cron_run_id=cron_run_id),
    )
