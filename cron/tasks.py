"""Thin Celery tasks: they take ids and call a service.

A job's own work (fire, settle, deliver) is sent to its tenant's queue, so one tenant's many jobs or slow
webhooks queue behind each other and not in front of another tenant's; the `queue` below is only the
default for a task sent without one. The sweeper is system work.

The worker runs a thread pool, where Celery cannot enforce time limits; every task here is a few queries,
and a webhook call is bounded by BEAMCLAW_CRON_DELIVERY_TIMEOUT_SECONDS. Deliveries are retried here, as the
transport contract asks of callers (channels_app/transport.py).
"""

from celery import shared_task
from django.conf import settings

from beamclaw_project.infra.deliveries import delivery_attempt
from beamclaw_project.infra.queues import SYSTEM_QUEUE
from channels_app.transport import TransientDeliveryError, retry_countdown
from cron import services
from cron.models import CronRun


@shared_task(name="cron.fire", queue=SYSTEM_QUEUE, acks_late=True, ignore_result=True)
def fire(job_id: int) -> None:
    """Sent by beat (the job's PeriodicTask `cron-job-<id>`)."""
    services.cron_job_fire(job_id=job_id, woken_by=CronRun.Trigger.BEAT)


@shared_task(name="cron.settle", queue=SYSTEM_QUEUE, acks_late=True, ignore_result=True)
def settle(cron_run_id: int) -> None:
    services.cron_run_settle(cron_run_id=cron_run_id)


@shared_task(name="cron.sweep", queue=SYSTEM_QUEUE, ignore_result=True)
def sweep() -> None:
    services.cron_sweep()


def sweep_send() -> None:
    """The housekeeping chore that starts a sweep (cron/apps.py)."""
    sweep.apply_async()


@shared_task(name=services.DELIVER_TASK, bind=True, queue=SYSTEM_QUEUE, acks_late=True, ignore_result=True, max_retries=None)
def deliver(self, cron_run_id: int) -> None:
    base = settings.BEAMCLAW_CRON["DELIVERY_RETRY_BASE_SECONDS"]
    delivery_attempt(
        self, services.DELIVERY_KIND, cron_run_id, lambda: services.cron_run_deliver(cron_run_id=cron_run_id),
        retry_on=(TransientDeliveryError,),
        countdown=lambda exc: retry_countdown(retries=self.request.retries, base_seconds=base, error=exc),
        queue=services.cron_run_queue(cron_run_id=cron_run_id),
    )
