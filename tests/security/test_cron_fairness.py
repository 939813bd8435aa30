"""One tenant's cron jobs must not crowd out another's, and concurrent changes must not fail.

A red-team pass had one tenant create 80 one-second jobs, ten requests at a time: another tenant's 2 s job
started 7-10 s late and some of its occurrences were skipped, 18 creations and several deletions answered
500, and the logs held `deadlock detected`, a foreign-key violation (a delete racing a firing) and duplicate
PeriodicTask names."""

import threading
from datetime import timedelta

import httpx
from django.conf import settings
from django.db import connection
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from beamclaw_project.celery import app
from beamclaw_project.infra.queues import tenant_queue
from cron.models import CronJob, CronRun
from cron.services import cron_job_fire
from cron.tasks import fire
from tests.conftest import wait_until

JOB = {"agent": "assistant", "prompt": "tick", "schedule": "every 1h"}


def post_job(live, bundle, name, **fields):
    return httpx.post(f"{live}/api/cron/jobs/", headers=bundle.headers, json={**JOB, "name": name, **fields}, timeout=30)


def test_a_tenant_has_at_most_the_configured_number_of_jobs_even_when_creating_concurrently(live, make_tenant):
    greedy, other = make_tenant(), make_tenant()
    cap = settings.BEAMCLAW_CRON["MAX_JOBS_PER_TENANT"]
    # Most of the cap taken already (rows only: their PeriodicTasks do not matter to the count).
    CronJob.objects.bulk_create(
        CronJob(tenant=greedy.tenant, agent=greedy.agent, name=f"old-{n}", prompt="p", kind="every", every_seconds=3600,
                anchor=timezone.now(), enabled=False, timeout_seconds=60)
        for n in range(cap - 4)
    )
    statuses = []
    threads = [threading.Thread(target=lambda n=n: statuses.append(post_job(live, greedy, f"new-{n}")))
               for n in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r.status_code for r in statuses) == [201] * 4 + [409] * 6, [r.text for r in statuses]
    assert CronJob.objects.filter(tenant=greedy.tenant).count() == cap
    refused = next(r for r in statuses if r.status_code == 409).json()
    assert refused["code"] == "cron_job_limit" and f"{cap} cron jobs" in refused["detail"]
    assert "Delete jobs you no longer need" in refused["detail"]

    assert post_job(live, other, "mine").status_code == 201, "another tenant is not affected"
    victim = CronJob.objects.filter(tenant=greedy.tenant).first()
    assert httpx.delete(f"{live}/api/cron/jobs/{victim.pk}/", headers=greedy.headers).status_code == 204
    assert post_job(live, greedy, "room-again").status_code == 201


def queue_length(queue: str) -> int:
    with app.connection_for_read() as conn:
        return conn.default_channel.client.llen(queue)  # the Redis transport keeps a queue as a list


def test_one_tenants_backlog_of_firings_does_not_delay_anothers(live, make_tenant):
    busy, quiet = make_tenant(), make_tenant()
    busy_job = CronJob.objects.get(pk=post_job(live, busy, "busy").json()["id"])
    quiet_job = CronJob.objects.get(pk=post_job(live, quiet, "quiet").json()["id"])
    # Beat sends each job's wake-ups to its tenant's queue, not to one queue shared by every tenant.
    for job, bundle in ((busy_job, busy), (quiet_job, quiet)):
        assert PeriodicTask.objects.get(name=f"cron-job-{job.pk}").queue == tenant_queue(bundle.tenant.slug)

    # A backlog of wake-ups for the busy tenant (they all wait for the same job's row lock, so they drain
    # slowly), then one due occurrence of the quiet tenant's job.
    for _ in range(400):
        fire.apply_async(args=[busy_job.pk], queue=tenant_queue(busy.tenant.slug))
    CronJob.objects.filter(pk=quiet_job.pk).update(next_run_at=timezone.now() - timedelta(seconds=0.5))
    fire.apply_async(args=[quiet_job.pk], queue=tenant_queue(quiet.tenant.slug))

    wait_until(lambda: CronRun.objects.filter(job=quiet_job).exists(), timeout=60, message="the quiet tenant's occurrence")
    # Ordering, not timing: the quiet tenant's occurrence was claimed while the busy backlog still waited.
    assert queue_length(tenant_queue(busy.tenant.slug)) > 0
    wait_until(lambda: queue_length(tenant_queue(busy.tenant.slug)) == 0, timeout=120, message="the busy backlog to drain")


def test_concurrent_creates_changes_deletes_and_firings_never_fail(live, make_tenant, worker):
    bundle = make_tenant()
    log = worker["proc"].log_path
    log_start = log.stat().st_size if log.exists() else 0
    headers = bundle.headers
    jobs = [post_job(live, bundle, f"job-{n}", session_target="isolated").json()["id"] for n in range(24)]
    to_delete, to_change = jobs[:8], jobs[8:16]
    answers, errors = [], []
    stop = threading.Event()

    def call(method, path, **kwargs):
        try:
            answers.append((method, path, httpx.request(method, f"{live}/api/cron/jobs/{path}", headers=headers,
                                                        timeout=60, **kwargs)))
        except Exception as exc:  # noqa: BLE001 - a dropped connection is a failure to report
            errors.append(f"{method} {path}: {exc!r}")

    def firing():
        # As beat and the sweeper would: every job is due, again and again, while the API changes them.
        try:
            while not stop.is_set():
                for job_id in jobs:
                    # Job by job: one multi-row UPDATE per thread, three at once, deadlocked with each other
                    # (rows met in different orders while a firing held some of them).
                    CronJob.objects.filter(pk=job_id).update(next_run_at=timezone.now() - timedelta(seconds=0.5))
                for job_id in jobs:
                    cron_job_fire(job_id=job_id, woken_by=CronRun.Trigger.BEAT)
        except Exception as exc:  # noqa: BLE001
            errors.append(f"fire: {exc!r}")
        finally:
            connection.close()

    firers = [threading.Thread(target=firing) for _ in range(3)]
    requests = (
        [threading.Thread(target=call, args=("DELETE", f"{j}/")) for j in to_delete]
        + [threading.Thread(target=call, args=("DELETE", f"{j}/")) for j in to_delete[:4]]  # twice: one is a 404
        + [threading.Thread(target=call, args=("PATCH", f"{j}/"), kwargs={"json": {"schedule": "every 2h"}})
           for j in to_change]
        + [threading.Thread(target=call, args=("POST", f"{j}/run/")) for j in jobs[16:]]
        + [threading.Thread(target=call, args=("POST", ""), kwargs={"json": {**JOB, "name": f"new-{n}"}})
           for n in range(10)]
    )
    for thread in firers:
        thread.start()
    for thread in requests:
        thread.start()
    for thread in requests:
        thread.join()
    stop.set()
    for thread in firers:
        thread.join()

    assert not errors, errors
    failed = [(m, p, r.status_code, r.text[:200]) for m, p, r in answers if r.status_code >= 500]
    assert not failed, failed
    deletes = [r.status_code for m, _, r in answers if m == "DELETE"]
    assert sorted(deletes) == [204] * 8 + [404] * 4
    assert all(r.status_code in (200, 201, 202) for m, _, r in answers if m != "DELETE")

    # No lost or half-done state: deleted jobs left nothing behind, every other job has its beat entry.
    alive = set(CronJob.objects.filter(tenant=bundle.tenant).values_list("pk", flat=True))
    assert alive.isdisjoint(to_delete) and len(alive) == 24 - 8 + 10
    assert not CronRun.objects.filter(job_id__in=to_delete).exists()
    assert not PeriodicTask.objects.filter(name__in=[f"cron-job-{j}" for j in to_delete]).exists()
    assert set(PeriodicTask.objects.filter(name__in=[f"cron-job-{j}" for j in alive]).values_list("name", flat=True)) == {
        f"cron-job-{j}" for j in alive
    }
    for job_id in to_change:
        assert CronJob.objects.get(pk=job_id).every_seconds == 7200
    # Every occurrence that was claimed ends (none stuck without a run).
    wait_until(lambda: not CronRun.objects.filter(tenant=bundle.tenant, status="running").exists(), timeout=120,
               message="every claimed occurrence to end")
    assert not CronRun.objects.filter(tenant=bundle.tenant, status="failed").exists(), list(
        CronRun.objects.filter(tenant=bundle.tenant, status="failed").values_list("error", flat=True)[:5]
    )
    new_log = log.read_bytes()[log_start:].decode(errors="replace") if log.exists() else ""
    assert "deadlock detected" not in new_log and "IntegrityError" not in new_log
