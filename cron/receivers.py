"""Signal receivers, connected in CronConfig.ready()."""

from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from beamclaw_project.infra.queues import tenant_queue
from cron.beat import beat_remove, beat_sync
from cron.models import CronJob, CronRun
from cron.services import BOOKKEEPING_FIELDS, cron_run_queue
from cron.tasks import deliver, settle
from sessions.models import Run
from sessions.signals import run_finished


@receiver(post_save, sender=CronJob, dispatch_uid="cron-job-beat-sync")
def _job_saved(sender, instance: CronJob, update_fields=None, **kwargs):
    # Any save (services, the admin, code that saves a job directly) keeps beat in step; saves that only
    # record what happened (the fire task's) are skipped to spare a query.
    if update_fields is not None and set(update_fields) <= BOOKKEEPING_FIELDS:
        return
    beat_sync(job=instance)


@receiver(post_delete, sender=CronJob, dispatch_uid="cron-job-beat-remove")
def _job_deleted(sender, instance: CronJob, **kwargs):
    # Also reached when a tenant or agent is deleted and its jobs go with it.
    beat_remove(job_id=instance.pk)


@receiver(run_finished, dispatch_uid="cron-run-finished")
def _run_finished(sender, run_id, status, trigger=None, **kwargs):
    # Sent for every run in the system: only cron-started runs cost a lookup; the work goes to the tenant's queue.
    if trigger != Run.Trigger.CRON:
        return
    found = CronRun.objects.filter(run_id=run_id).values_list("pk", "tenant__slug").first()
    if found is not None:
        cron_run_id, slug = found
        settle.apply_async(args=[cron_run_id], queue=tenant_queue(slug))


@receiver(post_save, sender=CronRun, dispatch_uid="cron-run-deliver")
def _cron_run_saved(sender, instance: CronRun, update_fields=None, **kwargs):
    # Settling (cron.services._finish_locked) is the one save that names delivery_status; attempts are
    # recorded with update(), which sends no signal. So a delivery is enqueued once, after the commit.
    if update_fields is None or "delivery_status" not in update_fields:
        return
    if instance.delivery_status == CronRun.Delivery.PENDING:
        cron_run_id = instance.pk
        transaction.on_commit(lambda: deliver.apply_async(args=[cron_run_id], queue=cron_run_queue(cron_run_id=cron_run_id)))
