"""The cron list tells a failed delivery from a succeeded run; the CronJob admin is the only place schedules
are edited (django-celery-beat's copies are not in the admin)."""

from django.urls import reverse
from django.utils import timezone

from cron.models import CronJob, CronRun
from cron.schedule import schedule_parse
from cron.services import cron_job_create
from tests.admin.helpers import list_row, page, visible


def job_with_a_failed_delivery(bundle):
    job = cron_job_create(
        tenant=bundle.tenant, agent=bundle.agent, name="nightly report", prompt="report",
        schedule=schedule_parse({"kind": "every", "every": "1h"}, now=timezone.now()),
        deliver={"kind": "webhook", "url": "https://example.com/hook"},
    )
    CronRun.objects.create(
        job=job, tenant=bundle.tenant, scheduled_for=timezone.now(), trigger="manual", status="succeeded",
        finished_at=timezone.now(), delivery_status="failed", delivery_attempts=3,
        delivery_error="the webhook answered 500 Internal Server Error",
    )
    job.last_status = "succeeded"
    job.save(update_fields=["last_status"])
    return job


def test_the_job_list_and_history_say_the_delivery_failed(admin_client, tenant):
    job = job_with_a_failed_delivery(tenant)
    listed = page(admin_client, reverse("admin:cron_cronjob_changelist"), q=tenant.tenant.slug)
    row = list_row(listed, "nightly report")
    assert "succeeded" in row and "delivery failed: the webhook answered 500 Internal Server Error" in row
    assert "By tenant" in listed

    history = visible(page(admin_client, reverse("admin:cron_cronjob_change", args=[job.pk])))
    assert "delivery failed: the webhook answered 500 Internal Server Error" in history
    runs = visible(page(admin_client, reverse("admin:cron_cronrun_changelist"), q="nightly report"))
    assert "delivery failed: the webhook answered 500" in runs and "By tenant" in runs


def test_a_job_without_a_target_shows_no_delivery(admin_client, tenant):
    cron_job_create(
        tenant=tenant.tenant, agent=tenant.agent, name="quiet job", prompt="hi",
        schedule=schedule_parse({"kind": "every", "every": "1h"}, now=timezone.now()),
    )
    listed = page(admin_client, reverse("admin:cron_cronjob_changelist"), q="quiet job")
    assert "delivery" not in list_row(listed, "quiet job")


def test_beat_models_are_not_in_the_admin(admin_client):
    index = page(admin_client, reverse("admin:index"))
    for name in ("Periodic tasks", "Intervals", "Crontabs", "Solar events", "Clocked"):
        assert name not in index
    assert "Cron jobs" in index
    assert admin_client.get("/admin/django_celery_beat/periodictask/").status_code == 404


def test_a_job_whose_schedule_cannot_be_read_is_still_listed(admin_client, tenant):
    # A row without its interval (written around the services): the sweeper disables such a job; the lists
    # that show every job must still render, and say what is wrong with it.
    job = cron_job_create(tenant=tenant.tenant, agent=tenant.agent, name="half written", prompt="p",
                          schedule=schedule_parse({"kind": "every", "every": "1h"}, now=timezone.now()))
    CronJob.objects.filter(pk=job.pk).update(every_seconds=None)
    listed = page(admin_client, reverse("admin:cron_cronjob_changelist"), q=tenant.tenant.slug)
    assert "unreadable every schedule" in list_row(listed, "half written")
    dashboard = admin_client.get(reverse("dashboard:cron"), {"tenant": tenant.tenant.slug})
    assert dashboard.status_code == 200 and "unreadable every schedule" in dashboard.content.decode()
