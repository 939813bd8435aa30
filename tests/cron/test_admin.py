"""Managing jobs in the Django admin: the form parses schedules like the API, and the actions work."""

from django.urls import reverse
from django_celery_beat.models import PeriodicTask

from cron.models import CronJob, CronRun


def form(bundle, **fields) -> dict:
    data = {
        "tenant": bundle.tenant.pk, "agent": bundle.agent.pk, "name": "from admin", "prompt": "hello",
        "session_target": "isolated", "kind": "every", "every": "45m", "tz": "UTC", "deliver": "null",
        "enabled": "on", "timeout_seconds": 600,
        "runs-TOTAL_FORMS": 0, "runs-INITIAL_FORMS": 0, "runs-MIN_NUM_FORMS": 0, "runs-MAX_NUM_FORMS": 0,
    }
    return {**data, **fields}


def test_adding_and_editing_a_job_in_the_admin_keeps_beat_in_step(admin_client, tenant):
    bad = admin_client.post(reverse("admin:cron_cronjob_add"), form(tenant, kind="cron", expr="61 * * * *"))
    assert bad.status_code == 200 and b"minute field: 61 is out of range 0-59" in bad.content
    added = admin_client.post(reverse("admin:cron_cronjob_add"), form(tenant))
    assert added.status_code == 302, added.content[:2000]
    job = CronJob.objects.get(tenant=tenant.tenant, name="from admin")
    assert job.every_seconds == 2700 and job.next_run_at is not None
    assert PeriodicTask.objects.get(name=f"cron-job-{job.pk}").interval.every == 2700

    changed = admin_client.post(
        reverse("admin:cron_cronjob_change", args=[job.pk]),
        form(tenant, kind="cron", expr="0 6 * * *", tz="Asia/Tokyo", every=""),
    )
    assert changed.status_code == 302
    job.refresh_from_db()
    assert (job.kind, job.expr, job.tz) == ("cron", "0 6 * * *", "Asia/Tokyo")
    assert PeriodicTask.objects.get(name=f"cron-job-{job.pk}").crontab.hour == "6"
    page = admin_client.get(reverse("admin:cron_cronjob_changelist"), {"q": "from admin"})
    assert page.status_code == 200 and b"0 6 * * * Asia/Tokyo" in page.content


def test_admin_actions_disable_enable_and_run_now(admin_client, worker, tenant):
    admin_client.post(reverse("admin:cron_cronjob_add"), form(tenant))
    job = CronJob.objects.get(tenant=tenant.tenant, name="from admin")
    changelist = reverse("admin:cron_cronjob_changelist")

    admin_client.post(changelist, {"action": "disable_jobs", "_selected_action": [job.pk]})
    job.refresh_from_db()
    assert job.enabled is False and job.next_run_at is None

    CronJob.objects.filter(pk=job.pk).update(consecutive_errors=3)
    admin_client.post(changelist, {"action": "enable_jobs", "_selected_action": [job.pk]})
    job.refresh_from_db()
    assert job.enabled is True and job.consecutive_errors == 0 and job.next_run_at is not None

    admin_client.post(changelist, {"action": "run_now", "_selected_action": [job.pk]})
    cron_run = CronRun.objects.get(job=job)
    assert cron_run.trigger == "manual" and cron_run.run_id is not None
    assert admin_client.get(reverse("admin:cron_cronrun_changelist")).status_code == 200
    assert admin_client.get(reverse("admin:cron_cronjob_change", args=[job.pk])).status_code == 200
