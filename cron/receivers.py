"""Signal receivers, connected in CronConfig.ready()."""

from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from beamclaw_project.infra.queues import tenant_queue
from beamclaw_project.infra.tasks import task_send
from cron.beat import beat_remove, beat_sync
from cron.models import CronJob, CronRun
from cron.services import BOOKKEEPING_FIELDS
from cron.tasks import settle
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
        task_send(settle.name, [cron_run_id], queue=tenant_queue(slug))

