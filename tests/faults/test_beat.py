"""Beat SIGKILLed and started again: no occurrence fires twice, none is lost. While no beat runs, the
workers' sweeper fires what is due; the new beat carries on.

A crash-recovery test about the sweeper's timing, so its worker ticks every half second and sweeps every
second with one second of slack (instead of 5 s, 5 s and 5 s) to keep up with a job due every 4 s (a
tenant's jobs run at most once a minute); beat keeps the production settings.
"""

import sys
from datetime import timedelta

import pytest
from django.utils import timezone as dj_timezone

from cron.models import CronJob, CronRun
from tests.conftest import wait_until
from tests.cron.test_firing import make_job
from tests.procs import Process

pytestmark = [pytest.mark.faults, pytest.mark.timeout(180)]


def _beat(name: str, service_env, log_dir, tmp_path) -> Process:
    argv = [sys.executable, "-m", "celery", "-A", "beamclaw_project", "beat", "-l", "INFO", "-S", "cron.scheduler:CronScheduler",
            "--schedule", str(tmp_path / f"{name}-schedule"), "--pidfile", str(tmp_path / f"{name}.pid")]
    return Process(name, argv, service_env, log_dir).start()


# Crash recovery of the cron sweeper is this test's subject, so its own sweeper worker (and only that one)
# runs the sweep on a shortened tick, to see beat killed and replaced within a few occurrences.
SWEEPER_TIMINGS = {
    "BEAMCLAW_HOUSEKEEPING_SECONDS": "0.5", "BEAMCLAW_CRON_SWEEP_SECONDS": "1", "BEAMCLAW_CRON_SWEEP_SLACK_SECONDS": "1",
}


def test_beat_killed_and_restarted_fires_each_occurrence_once(fleet, service_env, log_dir, tenant, tmp_path):
    fleet("beat-sweeper", env=SWEEPER_TIMINGS)
    start = dj_timezone.now().replace(microsecond=0) + timedelta(seconds=6)
    job = make_job(tenant, schedule={"kind": "every", "every": "4s", "anchor": start.isoformat()}, name="beat-kill")
    claimed = CronRun.objects.filter(job=job)
    first = _beat(f"beat-a-{job.pk}", service_env, log_dir, tmp_path)
    second = None
    try:
        wait_until(lambda: claimed.count() >= 2, timeout=40, message="two occurrences before the kill")
        first.kill()
        down_since = dj_timezone.now()
        # Two occurrences come due with no beat running.
        wait_until(lambda: dj_timezone.now() > down_since + timedelta(seconds=9), timeout=15, message="the clock")
        second = _beat(f"beat-b-{job.pk}", service_env, log_dir, tmp_path)
        restarted = claimed.count()
        # The new beat takes over waking the job (whether its wake-up or the sweeper claims an occurrence
        # first is a race the claim settles), and occurrences go on.
        wait_until(
            lambda: f"Sending due task cron-job-{job.pk}" in second.log_path.read_text() and claimed.count() >= restarted + 2,
            timeout=60, message="the new beat to wake the job, and two more occurrences",
        )
    finally:
        for beat in (first, second):
            if beat is not None:
                beat.stop()
        CronJob.objects.filter(pk=job.pk).update(enabled=False, next_run_at=None)

    occurrences = list(claimed.order_by("scheduled_for"))
    moments = [r.scheduled_for for r in occurrences]
    assert moments[0] == start
    assert all(b - a == timedelta(seconds=4) for a, b in zip(moments, moments[1:])), moments  # none missed, none twice
    assert {r.status for r in occurrences} <= {"succeeded", "running", "skipped"}, [(r.status, r.error) for r in occurrences]
    during_outage = [r for r in occurrences if down_since < r.scheduled_for < down_since + timedelta(seconds=8)]
    assert during_outage and all(r.trigger == "sweeper" for r in during_outage), [(r.scheduled_for, r.trigger) for r in during_outage]
