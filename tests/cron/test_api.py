"""The REST API as a client uses it: /api/cron/jobs/ CRUD, run now, history, validation, tenant scoping,
and the django-celery-beat rows each job keeps in step."""

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import httpx
import pytest
from django_celery_beat.models import PeriodicTask

from beamclaw_project.infra.queues import tenant_queue
from cron.models import CronJob, CronRun
from sessions.models import AgentSession
from tenants.services import agent_create
from tests.cron.conftest import finished

UTC = timezone.utc


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def job_body(**overrides) -> dict:
    body = {
        "name": "morning report",
        "agent": "assistant",
        "prompt": "Summarise the night.",
        "session_target": "main",
        "schedule": {"kind": "cron", "expr": "0 9 * * 1-5", "tz": "Europe/Berlin"},
    }
    return {**body, **overrides}


def periodic_task(job_id) -> PeriodicTask:
    return PeriodicTask.objects.select_related("clocked", "interval", "crontab").get(name=f"cron-job-{job_id}")


def test_each_schedule_kind_gets_its_next_run_and_its_beat_entry(api):
    at = (datetime.now(UTC) + timedelta(hours=2)).replace(microsecond=0)
    created = api.post("/jobs/", json=job_body(name="once", schedule={"kind": "at", "at": iso(at)}))
    assert created.status_code == 201, created.text
    job = created.json()
    assert parse(job["next_run_at"]) == at
    assert job["consecutive_errors"] == 0 and job["last_status"] == "" and job["enabled"] is True
    task = periodic_task(job["id"])
    assert task.clocked.clocked_time == at and task.one_off and task.enabled
    assert (task.task, task.queue, task.args) == ("cron.fire", tenant_queue(api.tenant.tenant.slug), f"[{job['id']}]")

    anchor = datetime(2026, 1, 1, 0, 0, 7, tzinfo=UTC)
    every = api.post("/jobs/", json=job_body(name="often", schedule={"kind": "every", "every": "1h30m", "anchor": iso(anchor)})).json()
    next_run = parse(every["next_run_at"])
    assert next_run > datetime.now(UTC) and (next_run - anchor) % timedelta(minutes=90) == timedelta(0)
    assert every["schedule"] == {"kind": "every", "every": "1h30m", "anchor": "2026-01-01T00:00:07Z"}
    task = periodic_task(every["id"])
    # Beat's first wake-up lands on the job's grid: one interval after the recorded last run.
    assert task.interval.every == 5400 and task.interval.period == "seconds"
    assert task.last_run_at + timedelta(seconds=5400) == next_run

    weekdays = api.post("/jobs/", json=job_body(name="weekdays")).json()
    berlin = parse(weekdays["next_run_at"]).astimezone(ZoneInfo("Europe/Berlin"))
    assert (berlin.hour, berlin.minute) == (9, 0) and berlin.isoweekday() <= 5
    crontab = periodic_task(weekdays["id"]).crontab
    assert (crontab.minute, crontab.hour, crontab.day_of_week, str(crontab.timezone)) == ("0", "9", "1,2,3,4,5", "Europe/Berlin")

    listed = api.get("/jobs/").json()
    assert listed["count"] == 3 and {"next", "previous"} <= set(listed)
    assert [j["name"] for j in listed["results"]] == ["once", "often", "weekdays"]


@pytest.mark.parametrize(
    "overrides, field, fragment",
    [
        ({"schedule": {"kind": "cron", "expr": "61 * * * *"}}, ("schedule", "expr"), "minute field: 61 is out of range 0-59"),
        ({"schedule": {"kind": "every", "every": "0s"}}, ("schedule", "every"), "between 1m and 3650d"),
        ({"schedule": {"kind": "cron", "expr": "0 9 * * *", "tz": "Europe/Atlantis"}}, ("schedule", "tz"), "Unknown time zone"),
        ({"schedule": {"kind": "at", "at": "2001-01-01T00:00:00Z"}}, ("schedule", "at"), "in the past"),
        ({"schedule": {"kind": "at", "at": "next tuesday"}}, ("schedule", "at"), "ISO 8601"),
        ({"schedule": {"kind": "hourly"}}, ("schedule", "kind"), "must be one of"),
        ({"schedule": 5}, ("schedule", "kind"), "Give an object"),
        ({"agent": "nobody"}, ("agent",), "You have no agent 'nobody'"),
        ({"session_target": "shared"}, ("session_target",), "not a valid choice"),
        ({"name": ""}, ("name",), "may not be blank"),
        ({"deliver": "ftp://example.com/x"}, ("deliver",), "not an http(s) URL"),
        ({"deliver": {"kind": "discord", "channel": "1"}}, ("deliver",), "not available"),
        ({"deliver": "http://169.254.169.254/latest"}, ("deliver",), "link-local"),
        ({"timeout_seconds": 0}, ("timeout_seconds",), "greater than or equal to 1"),
        ({"sesion_target": "main"}, ("sesion_target",), "Unknown field"),
    ],
)
def test_bad_input_is_a_400_naming_the_problem(api, overrides, field, fragment):
    response = api.post("/jobs/", json=job_body(**overrides))
    assert response.status_code == 400, response.text
    error = response.json()
    for key in field:
        error = error[key]
    assert fragment in " ".join(error if isinstance(error, list) else [str(error)])
    assert not CronJob.objects.filter(tenant=api.tenant.tenant).exists()


def test_missing_fields_and_duplicate_names(api):
    response = api.post("/jobs/", json={"agent": "assistant"})
    assert response.status_code == 400
    assert {"name", "prompt", "schedule"} <= set(response.json())
    assert api.post("/jobs/", json=job_body()).status_code == 201
    duplicate = api.post("/jobs/", json=job_body())
    assert duplicate.status_code == 400 and "already has a job named" in duplicate.json()["name"][0]
    not_json = api.post("/jobs/", content=b"{", headers={"Content-Type": "application/json"})
    assert not_json.status_code == 400


def test_another_tenants_jobs_and_agents_do_not_exist(live, api, make_tenant):
    other = make_tenant()
    agent_create(tenant=other.tenant, slug="secret-agent")
    theirs = httpx.post(f"{live}/api/cron/jobs/", headers=other.headers, json=job_body()).json()
    for method, path in [("GET", ""), ("PATCH", ""), ("DELETE", ""), ("POST", "run/"), ("GET", "runs/")]:
        response = api.request(method, f"/jobs/{theirs['id']}/{path}", json={} if method == "PATCH" else None)
        assert response.status_code == 404, (method, path)
    assert api.get("/jobs/").json()["count"] == 0
    borrowed = api.post("/jobs/", json=job_body(agent="secret-agent"))
    assert borrowed.status_code == 400 and "no agent 'secret-agent'" in borrowed.json()["agent"][0]
    assert httpx.get(f"{live}/api/cron/jobs/").status_code == 401


def test_disable_enable_and_reschedule(api):
    job = api.post("/jobs/", json=job_body()).json()
    disabled = api.patch(f"/jobs/{job['id']}/", json={"enabled": False}).json()
    assert disabled["enabled"] is False and disabled["next_run_at"] is None
    assert disabled["disabled_reason"] == "disabled by request"
    assert periodic_task(job["id"]).enabled is False

    CronJob.objects.filter(pk=job["id"]).update(consecutive_errors=2)
    enabled = api.patch(f"/jobs/{job['id']}/", json={"enabled": True}).json()
    assert enabled["enabled"] is True and enabled["consecutive_errors"] == 0 and enabled["disabled_reason"] == ""
    assert enabled["next_run_at"] == job["next_run_at"] and periodic_task(job["id"]).enabled is True

    moved = api.patch(f"/jobs/{job['id']}/", json={"schedule": {"kind": "cron", "expr": "15 6 * * SAT", "tz": "America/New_York"}})
    assert moved.status_code == 200, moved.text
    new_york = parse(moved.json()["next_run_at"]).astimezone(ZoneInfo("America/New_York"))
    assert (new_york.isoweekday(), new_york.hour, new_york.minute) == (6, 6, 15)
    crontab = periodic_task(job["id"]).crontab
    assert (crontab.minute, crontab.hour, crontab.day_of_week, str(crontab.timezone)) == ("15", "6", "6", "America/New_York")

    replaced = api.put(f"/jobs/{job['id']}/", json=job_body(name="renamed", schedule="every 10m", session_target="isolated"))
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["schedule"]["every"] == "10m" and replaced.json()["session_target"] == "isolated"
    assert periodic_task(job["id"]).interval.every == 600

    assert api.delete(f"/jobs/{job['id']}/").status_code == 204
    assert not PeriodicTask.objects.filter(name=f"cron-job-{job['id']}").exists()
    assert api.get(f"/jobs/{job['id']}/").status_code == 404


def test_saving_a_job_outside_the_api_keeps_beat_in_step(tenant):
    """Admin edits and `apply`-style code save jobs directly; beat must still follow."""
    from cron.schedule import schedule_parse
    from cron.services import cron_job_create

    now = datetime.now(UTC)
    job = cron_job_create(
        tenant=tenant.tenant, agent=tenant.agent, name="direct", prompt="hi",
        schedule=schedule_parse({"kind": "cron", "expr": "0 9 * * *"}, now=now),
    )
    job.expr, job.tz = "0 18 * * *", "Asia/Tokyo"
    job.save()
    job.refresh_from_db()
    assert job.next_run_at.astimezone(ZoneInfo("Asia/Tokyo")).hour == 18
    assert periodic_task(job.pk).crontab.hour == "18"
    CronJob.objects.filter(pk=job.pk).delete()  # as a tenant's or agent's deletion cascades
    assert not PeriodicTask.objects.filter(name=f"cron-job-{job.pk}").exists()


def test_run_now_in_the_main_session_and_history(api):
    job = api.post("/jobs/", json=job_body(prompt="status please", enabled=False)).json()
    accepted = api.post(f"/jobs/{job['id']}/run/")
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["status"] == "running" and accepted.json()["trigger"] == "manual"
    cron_run = finished(accepted.json()["id"])
    assert cron_run.status == "succeeded", cron_run.error
    history = api.get(f"/jobs/{job['id']}/runs/").json()
    assert history["count"] == 1 and history["results"][0]["status"] == "succeeded"
    assert history["results"][0]["run"] == str(cron_run.run_id)
    assert api.get(f"/jobs/{job['id']}/runs/?status=failed").json()["count"] == 0
    assert api.get(f"/jobs/{job['id']}/runs/?status=nope").status_code == 400
    main = AgentSession.objects.get(tenant=api.tenant.tenant, key="agent:assistant:main")
    assert cron_run.session_id == main.pk
    assert [m.text for m in main.messages.order_by("seq")] == ["status please", "Echo: status please"]
    after = api.get(f"/jobs/{job['id']}/").json()
    assert after["last_status"] == "succeeded" and after["enabled"] is False  # run now leaves the schedule alone


def test_isolated_runs_get_a_fresh_session_each(api):
    job = api.post("/jobs/", json=job_body(session_target="isolated")).json()
    runs = [finished(api.post(f"/jobs/{job['id']}/run/").json()["id"]) for _ in range(2)]
    sessions = [AgentSession.objects.get(pk=r.session_id) for r in runs]
    assert sessions[0].pk != sessions[1].pk
    assert [s.key for s in sessions] == [f"cron:{job['id']}:{r.pk}" for r in runs]
    assert all(s.status == "closed" and s.messages.count() == 2 for s in sessions)
    assert CronRun.objects.filter(job_id=job["id"], status="succeeded").count() == 2
