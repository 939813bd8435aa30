"""Existing jobs' PeriodicTasks send `cron.fire` to the tenant's queue instead of the shared `system` queue
(cron/beat.py says why). Updated in place: the rows keep their keys, so a running beat keeps their rhythm;
touching the `PeriodicTasks` row makes every beat reload the changed routing."""

import json

from django.db import migrations
from django.utils import timezone


def route_to_tenant_queues(apps, schema_editor):
    CronJob = apps.get_model("cron", "CronJob")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTasks = apps.get_model("django_celery_beat", "PeriodicTasks")
    changed = 0
    for job_id, slug in CronJob.objects.values_list("pk", "tenant__slug").iterator():
        queue = f"tenant.{slug}"
        for task in PeriodicTask.objects.filter(name=f"cron-job-{job_id}"):
            # The description is the signature beat_sync compares; it names the queue now.
            try:
                signature = {**json.loads(task.description), "queue": queue}
            except (ValueError, TypeError):
                signature = None
            description = json.dumps(signature, sort_keys=True) if isinstance(signature, dict) else task.description
            changed += PeriodicTask.objects.filter(pk=task.pk).update(queue=queue, description=description)
    if changed:
        PeriodicTasks.objects.update_or_create(ident=1, defaults={"last_update": timezone.now()})


def route_to_system_queue(apps, schema_editor):
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTasks = apps.get_model("django_celery_beat", "PeriodicTasks")
    if PeriodicTask.objects.filter(name__startswith="cron-job-").update(queue="system"):
        PeriodicTasks.objects.update_or_create(ident=1, defaults={"last_update": timezone.now()})


class Migration(migrations.Migration):
    dependencies = [
        ("cron", "0001_initial"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(route_to_tenant_queues, route_to_system_queue)]
