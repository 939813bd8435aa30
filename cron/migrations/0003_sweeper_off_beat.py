"""The sweeper is started by the workers' housekeeping now (cron/apps.py), not by beat: remove the
PeriodicTask that beat made from the old CELERY_BEAT_SCHEDULE entry, or beat would go on sending a second
sweep every few seconds. Touching `PeriodicTasks` makes every running beat reload its schedule."""

from django.db import migrations
from django.utils import timezone


def remove_beat_sweep(apps, schema_editor):
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTasks = apps.get_model("django_celery_beat", "PeriodicTasks")
    deleted, _ = PeriodicTask.objects.filter(name="cron-sweep").delete()
    if deleted:
        PeriodicTasks.objects.update_or_create(ident=1, defaults={"last_update": timezone.now()})


class Migration(migrations.Migration):
    dependencies = [
        ("cron", "0002_fire_on_tenant_queues"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(remove_beat_sweep, migrations.RunPython.noop)]
