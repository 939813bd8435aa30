"""The `cron` tool an agent uses on its own jobs (called directly; the registry in tools/ wires it up)."""

from django_celery_beat.models import PeriodicTask

from cron.models import CronJob
from cron.tool import CRON_TOOL, run_cron_tool
from tenants.services import agent_create


def call(bundle, as_agent=None, **input):
    return run_cron_tool(tenant=bundle.tenant, agent=as_agent or bundle.agent, session=None, input=input)


def test_the_tool_describes_itself():
    assert CRON_TOOL["name"] == "cron"
    assert CRON_TOOL["input_schema"]["properties"]["action"]["enum"] == ["list", "add", "remove"]


def test_an_agent_adds_lists_and_removes_its_jobs(tenant):
    added = call(tenant, action="add", name="standup", prompt="Post the standup notes.",
                 schedule={"kind": "cron", "expr": "0 9 * * MON-FRI", "tz": "Europe/Berlin"})
    assert added["ok"] is True, added
    job = added["output"]
    assert job["agent"] == "assistant" and job["next_run_at"] and job["session_target"] == "main"
    assert PeriodicTask.objects.filter(name=f"cron-job-{job['id']}", enabled=True).exists()
    assert call(tenant, action="add", name="nudge", prompt="Nudge.", schedule={"kind": "every", "every": "2h"})["ok"]

    listed = call(tenant, action="list")
    assert listed["ok"] and [j["name"] for j in listed["output"]] == ["standup", "nudge"]

    assert call(tenant, action="remove", name="nudge") == {"ok": True, "output": {"removed": {"id": listed["output"][1]["id"], "name": "nudge"}}}
    assert call(tenant, action="remove", id=job["id"])["ok"]
    assert call(tenant, action="list")["output"] == []
    assert not PeriodicTask.objects.filter(name=f"cron-job-{job['id']}").exists()


def test_the_tool_validates_like_the_api(tenant):
    bad = call(tenant, action="add", name="x", prompt="y", schedule={"kind": "cron", "expr": "61 * * * *"})
    assert bad == {"ok": False, "output": "Invalid input: schedule.expr: minute field: 61 is out of range 0-59."}
    past = call(tenant, action="add", name="x", prompt="y", schedule={"kind": "at", "at": "2001-01-01T00:00:00Z"})
    assert past["ok"] is False and "in the past" in past["output"]
    missing = call(tenant, action="add", name="x")
    assert missing["ok"] is False and "prompt" in missing["output"] and "schedule" in missing["output"]
    assert call(tenant, action="add", name="x", prompt="y", schedule="every 5m")["ok"]
    duplicate = call(tenant, action="add", name="x", prompt="y", schedule="every 5m")
    assert duplicate["ok"] is False and "already has a job named 'x'" in duplicate["output"]
    assert call(tenant, action="explode") == {"ok": False, "output": "'action' must be one of list, add, remove."}
    assert call(tenant, action="remove")["ok"] is False


def test_an_agent_only_sees_its_own_jobs(tenant, make_tenant):
    other_agent = agent_create(tenant=tenant.tenant, slug="other")
    assert call(tenant, as_agent=other_agent, action="add", name="theirs", prompt="p", schedule="every 1h")["ok"]
    stranger = make_tenant()
    assert call(stranger, action="add", name="elsewhere", prompt="p", schedule="every 1h")["ok"]

    assert call(tenant, action="list")["output"] == []
    theirs = CronJob.objects.get(tenant=tenant.tenant, name="theirs")
    assert call(tenant, action="remove", id=theirs.pk)["ok"] is False
    assert call(tenant, action="remove", name="elsewhere")["ok"] is False
    refused = call(tenant, action="add", name="z", prompt="p", schedule="every 1h", agent="other")
    assert refused == {"ok": False, "output": "You can only manage your own jobs."}
    assert CronJob.objects.filter(tenant__in=[tenant.tenant, stranger.tenant], name__in=["theirs", "elsewhere"]).count() == 2
