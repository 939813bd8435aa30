"""Firing occurrences: exactly once with two real beat processes, failures, auto-disable, stuck runs,
missed and overlapping occurrences, the sweeper."""

import sys
import threading
from datetime import datetime, timedelta, timezone

import pytest
from django.db import IntegrityError, connection
from django.utils import timezone as dj_timezone
from django_celery_beat.models import PeriodicTask

from cron.models import CronJob, CronRun
from cron.schedule import schedule_parse
from cron.services import cron_job_create, cron_job_fire, cron_job_run_now, cron_sweep
from sessions import events
from sessions.models import AgentSession, Run
from tests.conftest import Process, wait_until
from tests.cron.conftest import finished

UTC = timezone.utc
FAIL = "[[status=400]] this run fails"


def make_job(bundle, *, schedule="every 1h", prompt="hello", **fields) -> CronJob:
    return cron_job_create(
        tenant=bundle.tenant, agent=bundle.agent, name=fields.pop("name", "job"), prompt=prompt,
        schedule=schedule_parse(schedule, now=dj_timezone.now()), **fields,
    )


def make_due(job: CronJob, ago: float = 0.5) -> datetime:
    """Pretend the job's next occurrence came `ago` seconds ago (what beat sees when it wakes the job)."""
    due = dj_timezone.now() - timedelta(seconds=ago)
    CronJob.objects.filter(pk=job.pk).update(next_run_at=due)
    return due


def fire(job: CronJob, woken_by: str = CronRun.Trigger.BEAT) -> CronRun | None:
    return cron_job_fire(job_id=job.pk, woken_by=woken_by)


def test_two_beats_run_each_occurrence_exactly_once(worker, service_env, log_dir, tenant, tmp_path):
    # Beat needs a few seconds to start; the first occurrence comes after that.
    start = dj_timezone.now().replace(microsecond=0) + timedelta(seconds=6)
    job = make_job(tenant, schedule={"kind": "every", "every": "2s", "anchor": start.isoformat()}, name="tick")
    once = make_job(tenant, schedule={"kind": "at", "at": (start + timedelta(seconds=3)).isoformat()}, name="once",
                    session_target="isolated")
    beats = []
    # The stock scheduler and our drop-in (cron/scheduler.py) side by side, as in a rolling upgrade.
    for n, scheduler in enumerate(("django_celery_beat.schedulers:DatabaseScheduler", "cron.scheduler:CronScheduler")):
        argv = [sys.executable, "-m", "celery", "-A", "beamclaw_project", "beat", "-l", "DEBUG", "-S", scheduler,
                "--schedule", str(tmp_path / f"beat{n}-schedule"), "--pidfile", str(tmp_path / f"beat{n}.pid")]
        beats.append(Process(f"beat{n}-{job.pk}", argv, service_env, log_dir).start())
    try:
        wait_until(lambda: CronRun.objects.filter(job=job, status="succeeded").count() >= 5, timeout=40,
                   message="five occurrences of the 2s job")
        wait_until(lambda: CronRun.objects.filter(job=once).exclude(status="running").exists(), timeout=10,
                   message="the at job's run")
    finally:
        for beat in beats:
            beat.stop()
        CronJob.objects.filter(pk=job.pk).update(enabled=False, next_run_at=None)  # leave nothing due behind
    for beat in beats:
        # Both beats really woke the job, so every occurrence was offered twice.
        assert f"cron-job-{job.pk}" in beat.log_path.read_text(), beat.log_tail()

    # Behaviour, not timing (lags are figures in bench/cron_bench.py): every occurrence since the first
    # was claimed exactly once, none was missed, and each that ran is one agent run. On a loaded machine an
    # occurrence may be recorded as skipped (its predecessor still running, or too late), never dropped.
    occurrences = list(CronRun.objects.filter(job=job).order_by("scheduled_for"))
    moments = [r.scheduled_for for r in occurrences]
    assert moments[0] == start
    assert all(b - a == timedelta(seconds=2) for a, b in zip(moments, moments[1:])), moments  # none missed
    assert {r.status for r in occurrences} <= {"succeeded", "running", "skipped"}, [(r.status, r.error) for r in occurrences]
    runs = [r for r in occurrences if r.status != "skipped"]
    # Beat wakes them; under load the sweeper may catch one beat was late for. Never a manual trigger.
    assert {r.trigger for r in occurrences} <= {"beat", "sweeper"} and "beat" in {r.trigger for r in occurrences}
    main = AgentSession.objects.get(tenant=tenant.tenant, key="agent:assistant:main")
    cron_runs_of_session = Run.objects.filter(session=main, trigger=Run.Trigger.CRON)
    assert cron_runs_of_session.count() == len(runs) == len({r.run_id for r in runs})  # one agent run each

    once.refresh_from_db()
    assert [r.status for r in once.runs.all()] == ["succeeded"]
    assert once.enabled is False and once.next_run_at is None and "ran once" in once.disabled_reason
    assert PeriodicTask.objects.get(name=f"cron-job-{once.pk}").enabled is False


def test_beat_wakes_the_jobs_of_a_tenant_due_together_with_one_message(worker, service_env, log_dir, tenant,
                                                                         make_tenant, tmp_path):
    # Jobs due at the same moments: four of one tenant, one of another.
    start = dj_timezone.now().replace(microsecond=0) + timedelta(seconds=6)
    every = {"kind": "every", "every": "2s", "anchor": start.isoformat()}
    other = make_tenant()
    together = [make_job(tenant, schedule=every, name=f"together-{n}", session_target="isolated") for n in range(4)]
    alone = make_job(other, schedule=every, name="alone", session_target="isolated")
    argv = [sys.executable, "-m", "celery", "-A", "beamclaw_project", "beat", "-l", "INFO", "-S",
            "cron.scheduler:CronScheduler", "--schedule", str(tmp_path / "beat-schedule"),
            "--pidfile", str(tmp_path / "beat.pid")]
    beat = Process(f"beat-together-{alone.pk}", argv, service_env, log_dir).start()
    jobs = [*together, alone]
    try:
        wait_until(lambda: all(CronRun.objects.filter(job=job).count() >= 3 for job in jobs), timeout=40,
                   message="three occurrences of each job")
    finally:
        beat.stop()
        CronJob.objects.filter(pk__in=[job.pk for job in jobs]).update(enabled=False, next_run_at=None)
    log = beat.log_path.read_text()
    assert "wake-up sent for 4 job(s)" in log and "wake-up sent for 1 job(s)" in log, beat.log_tail()
    assert "wake-up sent for 5 job(s)" not in log, "one wake-up per tenant"
    # Each job's occurrences, each claimed once, none missed, though three of four jobs had no message.
    for job in jobs:
        moments = [r.scheduled_for for r in CronRun.objects.filter(job=job).order_by("scheduled_for")]
        assert moments[0] == start and all(b - a == timedelta(seconds=2) for a, b in zip(moments, moments[1:])), moments
    assert {r.trigger for r in CronRun.objects.filter(job__in=jobs)} <= {"beat", "sweeper"}


def test_a_woken_occurrence_is_claimed_once_however_often_it_is_woken(worker, tenant):
    job = make_job(tenant)
    due = make_due(job)
    results = []

    def wake():
        try:
            results.append(fire(job))
        finally:
            connection.close()

    threads = [threading.Thread(target=wake) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    claimed = [r for r in results if r is not None]
    assert len(claimed) == 1 and claimed[0].scheduled_for == due
    assert finished(claimed[0].pk).status == "succeeded"
    with pytest.raises(IntegrityError):  # the claim itself: one row per (job, scheduled time)
        CronRun.objects.create(job=job, tenant=tenant.tenant, scheduled_for=due, trigger="beat")
    job.refresh_from_db()
    assert job.next_run_at > dj_timezone.now()
    assert fire(job) is None  # woken again before the next occurrence: nothing to do


def test_three_errors_in_a_row_disable_the_job_and_a_success_resets_the_count(worker, tenant):
    # Isolated: in the main session the failed turns would stay in the transcript the next run sees.
    job = make_job(tenant, prompt=FAIL, session_target="isolated")
    for expected in (1, 2):
        make_due(job)
        cron_run = finished(fire(job).pk)
        assert cron_run.status == "failed" and cron_run.error == Run.objects.get(pk=cron_run.run_id).error != ""
        job.refresh_from_db()
        assert job.consecutive_errors == expected and job.enabled

    CronJob.objects.filter(pk=job.pk).update(prompt="fine now")
    make_due(job)
    assert finished(fire(job).pk).status == "succeeded"
    job.refresh_from_db()
    assert job.consecutive_errors == 0 and job.last_status == "succeeded"

    CronJob.objects.filter(pk=job.pk).update(prompt=FAIL)
    for _ in range(3):
        make_due(job)
        last = finished(fire(job).pk)
    job.refresh_from_db()
    assert (job.enabled, job.consecutive_errors, job.next_run_at) == (False, 3, None)
    assert job.disabled_reason.startswith("disabled after 3 consecutive errors; last: ") and last.error in job.disabled_reason
    assert PeriodicTask.objects.get(name=f"cron-job-{job.pk}").enabled is False


@pytest.mark.parametrize("session_target", ["main", "isolated"])
def test_an_occurrence_s_reply_is_not_streamed_delta_by_delta(worker, tenant, session_target):
    """Nobody reads a cron run's deltas as they come (its reply is delivered at its end), so they travel
    joined (sessions/runs/delta_window.py); the model sent 7 deltas 20 ms apart. Both ways a run starts: in
    the main session, and in a fresh one with the tenant's other isolated occurrences."""
    job = make_job(tenant, prompt="one two three four five six [[delay_ms=20]]", session_target=session_target)
    make_due(job)
    cron_run = finished(fire(job).pk)
    assert cron_run.status == "succeeded", cron_run.error
    deltas = [e.payload["text"] for e in events.read_all(cron_run.run_id) if e.event == events.TEXT_DELTA]
    assert "".join(deltas) == "Echo: one two three four five six" and len(deltas) <= 2


def test_a_run_stuck_past_its_timeout_is_marked_failed_and_aborted(worker, tenant):
    job = make_job(tenant, prompt="[[deltas=100]] [[delay_ms=200]] a very slow answer", timeout_seconds=1)
    cron_run = cron_job_run_now(job=job)
    wait_until(lambda: Run.objects.filter(pk=cron_run.run_id, status="running").exists(), timeout=10, message="run start")

    def swept():
        cron_sweep()
        return CronRun.objects.filter(pk=cron_run.pk, status="failed").first()

    ended = wait_until(swept, timeout=10, interval=0.2, message="the sweeper to end the stuck run")
    assert ended.error == "stuck: no result after 1 s (the job's timeout)"
    wait_until(lambda: Run.objects.get(pk=cron_run.run_id).status == "aborted", timeout=10, message="the run to abort")
    job.refresh_from_db()
    assert job.consecutive_errors == 1 and job.last_status == "failed"
    assert CronRun.objects.get(pk=cron_run.pk).status == "failed"  # the run's own end does not overwrite it


def test_an_occurrence_whose_run_is_still_going_is_skipped(worker, tenant):
    job = make_job(tenant, prompt="[[deltas=10]] [[delay_ms=200]] slowish")
    first = cron_job_run_now(job=job)
    make_due(job)
    second = fire(job)
    assert second.status == "skipped" and second.error == "the previous run of this job is still running"
    assert second.run_id is None
    assert finished(first.pk).status == "succeeded"


def test_a_long_missed_occurrence_is_recorded_and_not_run_late(tenant):
    job = make_job(tenant)
    make_due(job, ago=3600)
    skipped = fire(job)
    assert skipped.status == "skipped" and skipped.error.startswith("missed: woken 3600 s late")
    assert skipped.run_id is None
    job.refresh_from_db()
    assert job.next_run_at > dj_timezone.now() and job.consecutive_errors == 0


def test_the_sweeper_fires_what_beat_missed_and_settles_lost_endings(worker, tenant):
    job = make_job(tenant, schedule={"kind": "cron", "expr": "0 3 * * *", "tz": "Europe/Berlin"})
    make_due(job, ago=6)
    cron_sweep()
    cron_run = finished(CronRun.objects.get(job=job).pk)
    assert (cron_run.trigger, cron_run.status) == ("sweeper", "succeeded")

    # The worker that ended the run died before the run_finished signal: the sweeper notices.
    CronRun.objects.filter(pk=cron_run.pk).update(status="running", finished_at=None)
    Run.objects.filter(pk=cron_run.run_id).update(finished_at=dj_timezone.now() - timedelta(seconds=30))
    cron_sweep()
    assert CronRun.objects.get(pk=cron_run.pk).status == "succeeded"


def test_a_suspended_tenants_jobs_do_not_run(tenant):
    job = make_job(tenant)
    tenant.tenant.status = "suspended"
    tenant.tenant.save(update_fields=["status"])
    make_due(job)
    skipped = fire(job)
    assert skipped.status == "skipped" and "suspended" in skipped.error


def test_the_sweeper_is_started_by_the_workers_housekeeping_not_by_beat():
    from django.conf import settings

    from beamclaw_project.infra.housekeeping import chores

    sweep = {chore.name: chore for chore in chores()}["cron_sweep"]
    assert sweep.every_seconds == settings.BEAMCLAW_CRON["SWEEP_SECONDS"]
    assert "cron-sweep" not in getattr(settings, "CELERY_BEAT_SCHEDULE", {})


def test_a_lost_ending_of_a_run_without_an_end_time_is_settled_and_does_not_stop_the_sweep(worker, tenant):
    # A run ended by hand or by older code may lack `finished_at`; one such row used to stop every sweep.
    job = make_job(tenant)
    cron_run = finished(cron_job_run_now(job=job).pk)
    CronRun.objects.filter(pk=cron_run.pk).update(status="running", finished_at=None)
    Run.objects.filter(pk=cron_run.run_id).update(finished_at=None)
    cron_sweep()
    assert CronRun.objects.get(pk=cron_run.pk).status == "succeeded"


def test_one_wake_up_claims_and_starts_every_due_job_of_its_tenant_and_no_one_elses(worker, tenant, make_tenant):
    # A minute boundary with many jobs due: the first wake-up of a tenant claims them all, each isolated
    # occurrence in a session of its own; the others' own wake-ups then find nothing to do.
    isolated = [make_job(tenant, name=f"iso-{n}", prompt=f"report {n}", session_target="isolated") for n in range(4)]
    main = make_job(tenant, name="main", prompt="main report")
    later = make_job(tenant, name="later")
    other = make_tenant()
    elsewhere = make_job(other, name="other-tenants")
    due = {job.pk: make_due(job) for job in (*isolated, main, elsewhere)}

    first = fire(isolated[0])
    assert first.job_id == isolated[0].pk and first.status == "running"
    assert all(fire(job) is None for job in (*isolated[1:], main))  # claimed with the first

    claimed = {r.job_id: r for r in CronRun.objects.filter(job__tenant=tenant.tenant)}
    assert set(claimed) == {job.pk for job in (*isolated, main)}  # not the job that is not due yet
    assert all(r.scheduled_for == due[r.job_id] and r.trigger == "beat" for r in claimed.values())
    assert not CronRun.objects.filter(job=later).exists() and not CronRun.objects.filter(job=elsewhere).exists()
    for job in (*isolated, main):
        job.refresh_from_db()
        assert job.next_run_at > dj_timezone.now() and job.last_status in ("running", "succeeded")

    ended = {job_id: finished(r.pk) for job_id, r in claimed.items()}
    assert {r.status for r in ended.values()} == {"succeeded"}, [(r.status, r.error) for r in ended.values()]
    for n, job in enumerate(isolated):
        session = AgentSession.objects.get(pk=ended[job.pk].session_id)
        assert session.key == f"cron:{job.pk}:{ended[job.pk].pk}" and session.ephemeral
        transcript = [(m.role, m.content[0].get("text")) for m in session.messages.order_by("seq")]
        assert transcript == [("user", f"report {n}"), ("assistant", f"Echo: report {n}")]
        assert Run.objects.get(pk=ended[job.pk].run_id).trigger == "cron"
    assert AgentSession.objects.get(pk=ended[main.pk].session_id).key == "agent:assistant:main"
    assert len({r.session_id for r in ended.values()}) == 5

    # The other tenant's job is claimed by its own wake-up.
    assert finished(fire(elsewhere).pk).status == "succeeded"


def test_a_batch_larger_than_the_tenants_run_cap_waits_its_turn_and_all_of_it_runs(worker, tenant):
    tenant.tenant.max_concurrent_runs = 2
    tenant.tenant.save(update_fields=["max_concurrent_runs"])
    jobs = [make_job(tenant, name=f"job-{n}", prompt=f"[[deltas=5]] [[delay_ms=50]] part {n}", session_target="isolated")
            for n in range(5)]
    for job in jobs:
        make_due(job)
    assert fire(jobs[0]) is not None
    cron_runs = [finished(r.pk, timeout=60) for r in CronRun.objects.filter(job__in=jobs)]
    assert len(cron_runs) == 5 and {r.status for r in cron_runs} == {"succeeded"}, [(r.status, r.error) for r in cron_runs]
    for cron_run in cron_runs:  # the three that waited got their user message when they started
        roles = [m.role for m in AgentSession.objects.get(pk=cron_run.session_id).messages.order_by("seq")]
        assert roles == ["user", "assistant"], roles
    runs = list(Run.objects.filter(pk__in=[r.run_id for r in cron_runs]))
    # Never more than two at once: at each run's start, at most one other had started and not yet ended.
    for run in runs:
        overlapping = [o for o in runs if o.pk != run.pk and o.started_at <= run.started_at < o.finished_at]
        assert len(overlapping) <= 1, (run.started_at, [(o.started_at, o.finished_at) for o in overlapping])


def test_a_batch_of_a_tenant_over_its_daily_token_budget_is_skipped_saying_why(tenant):
    from tenants.models import Tenant

    Tenant.objects.filter(pk=tenant.tenant.pk).update(daily_token_budget=1)
    Run.objects.create(tenant=tenant.tenant, session=AgentSession.objects.create(tenant=tenant.tenant, agent=tenant.agent, key="spent"),
                       input=[], status="succeeded", input_tokens=5)
    jobs = [make_job(tenant, name=f"job-{n}", session_target="isolated") for n in range(3)]
    for job in jobs:
        make_due(job)
    assert fire(jobs[0]).status == "skipped"
    skipped = list(CronRun.objects.filter(job__in=jobs))
    assert len(skipped) == 3 and {r.status for r in skipped} == {"skipped"}
    assert all(r.error.startswith("Daily token budget of 1 tokens is used up") and r.run_id is None for r in skipped)
    assert not AgentSession.objects.filter(tenant=tenant.tenant, key__startswith="cron:").exists()


def test_a_job_whose_next_occurrence_cannot_be_computed_is_disabled_saying_why_and_the_rest_run(worker, tenant):
    woken, broken, fine = (make_job(tenant, name=n, schedule="0 3 * * *", session_target="isolated")
                           for n in ("woken", "broken", "fine"))
    for job in (woken, broken, fine):
        make_due(job)
    CronJob.objects.filter(pk=broken.pk).update(tz="Nowhere/Gone")  # say, a zone tzdata no longer has
    fire(woken)
    assert set(CronRun.objects.filter(job__tenant=tenant.tenant).values_list("job_id", flat=True)) == {woken.pk, fine.pk}
    assert all(finished(r.pk).status == "succeeded" for r in CronRun.objects.filter(job__in=[woken, fine]))
    # Left enabled it would fail every wake-up and every sweep, for good.
    broken.refresh_from_db()
    assert (broken.enabled, broken.next_run_at) == (False, None)
    assert broken.disabled_reason == "disabled: its next occurrence cannot be computed (Unknown time zone 'Nowhere/Gone'.)"
    assert PeriodicTask.objects.get(name=f"cron-job-{broken.pk}").enabled is False
    # Woken itself, it is disabled the same way.
    CronJob.objects.filter(pk=broken.pk).update(enabled=True, next_run_at=dj_timezone.now())
    assert fire(broken) is None
    broken.refresh_from_db()
    assert not broken.enabled and not CronRun.objects.filter(job=broken).exists()


def test_the_sweeper_goes_on_past_a_job_it_cannot_fire(worker, tenant, make_tenant):
    stuck = make_job(tenant, name="stuck")
    other = make_tenant()
    overdue = make_job(other, name="overdue-elsewhere", schedule={"kind": "cron", "expr": "0 3 * * *", "tz": "UTC"})
    make_due(stuck, ago=20)
    make_due(overdue, ago=10)
    CronJob.objects.filter(pk=stuck.pk).update(every_seconds=None)  # a row no schedule can be read from
    try:
        cron_sweep()
        assert finished(CronRun.objects.get(job=overdue).pk).trigger == "sweeper"
    finally:
        CronJob.objects.filter(pk=stuck.pk).update(enabled=False, next_run_at=None)  # leave nothing due behind
