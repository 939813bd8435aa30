"""The dashboard's pages and forms through Django's test client, against the live worker where a run or a
cron job must really happen: what an operator reads on each page and what each button does."""

from http.server import BaseHTTPRequestHandler

import httpx
import pytest
from django.urls import reverse

from cron.models import CronJob, CronRun
from sessions.models import Message
from sessions.services import session_create
from tests.conftest import WEBHOOK_HOST, http_server, wait_until
from tools.services import tool_invoke


@pytest.fixture
def refusing_webhook():
    """A webhook receiver that answers 404: a delivery there fails at once, for good."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    with http_server(Handler, WEBHOOK_HOST) as server:
        yield f"http://{WEBHOOK_HOST}:{server.server_address[1]}/hook"


def test_a_transcript_shows_every_kind_of_block(operator_client, tenant):
    session = session_create(tenant=tenant.tenant, agent=tenant.agent)
    turns = [
        ("user", [{"type": "text", "text": "list the files"}]),
        ("assistant", [{"type": "thinking", "thinking": "use exec"},
                       {"type": "tool_use", "id": "toolu_1", "name": "exec", "input": {"command": "ls -la"}}]),
        ("user", [{"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "README.md"}]},
                  {"type": "tool_result", "tool_use_id": "toolu_2", "content": "exit 2", "is_error": True}]),
        ("assistant", [{"type": "server_tool_use", "name": "search", "input": {"q": "x"}}, {"type": "text", "text": "<b>done</b>"}]),
    ]
    for seq, (role, content) in enumerate(turns, start=1):
        Message.objects.create(session=session, seq=seq, role=role, content=content)
    page = operator_client.get(reverse("dashboard:session", args=[session.pk])).content.decode()
    for shown in ("list the files", "use exec", "tool call: exec (toolu_1)", "&quot;command&quot;: &quot;ls -la&quot;",
                  "tool result for toolu_1", "README.md", "tool result (error) for toolu_2", "exit 2",
                  "server_tool_use", "&lt;b&gt;done&lt;/b&gt;"):
        assert shown in page, shown
    assert "<b>done</b>" not in page, "model output is escaped"


def test_the_runs_page_filters_by_tenant(operator_client, live, make_tenant):
    ours, theirs = make_tenant(), make_tenant()
    run_ids = {}
    for bundle in (ours, theirs):
        with httpx.Client(base_url=f"{live}/api", headers=bundle.headers, timeout=30) as api:
            session_id = api.post("/sessions/", json={"agent": "assistant"}).json()["id"]
            run_ids[bundle.tenant.slug] = api.post(f"/sessions/{session_id}/messages/", json={"content": "hi"}).json()["run"]["id"]
    page = operator_client.get(reverse("dashboard:runs"), {"tenant": ours.tenant.slug}).content.decode()
    assert run_ids[ours.tenant.slug] in page and run_ids[theirs.tenant.slug] not in page
    everything = operator_client.get(reverse("dashboard:runs")).content.decode()
    assert run_ids[ours.tenant.slug] in everything and run_ids[theirs.tenant.slug] in everything


def test_chat_posts_say_what_is_wrong(operator_client, tenant):
    session = session_create(tenant=tenant.tenant, agent=tenant.agent)
    url = reverse("dashboard:session_send", args=[session.pk])
    empty = operator_client.post(url, {"message": "  "}, HTTP_ACCEPT="application/json")
    assert empty.status_code == 400 and "message is empty" in empty.json()["error"]
    bad_mode = operator_client.post(url, {"message": "hi", "mode": "shout"}, HTTP_ACCEPT="application/json")
    assert bad_mode.status_code == 400 and "mode must be one of followup" in bad_mode.json()["error"]
    followed = operator_client.post(url, {"message": ""}, follow=True)
    assert "message is empty" in followed.content.decode()
    assert not session.runs.exists()


def test_new_sessions_need_an_agent(operator_client, tenant):
    response = operator_client.post(reverse("dashboard:session_new"), {"agent": "nope"}, follow=True)
    assert "Choose the agent" in response.content.decode()
    taken = session_create(tenant=tenant.tenant, agent=tenant.agent, key="agent:assistant:taken")
    again = operator_client.post(reverse("dashboard:session_new"), {"agent": tenant.agent.pk, "key": taken.key}, follow=True)
    assert again.redirect_chain[-1][0] == reverse("dashboard:sessions")
    assert "messages" in again.context and list(again.context["messages"])


def test_deny_from_the_approvals_page_and_a_second_decision_is_refused(operator_client, operator, make_tenant):
    bundle = make_tenant(approval={"mode": "always", "allowlist": []})
    approval = tool_invoke(tenant=bundle.tenant, agent=bundle.agent, tool="web_fetch",
                           tool_input={"url": "http://10.255.0.1/x", "max_chars": 100}).approval
    page = operator_client.get(reverse("dashboard:approvals")).content.decode()
    assert "http://10.255.0.1/x" in page and "May vary without asking again: max_chars" in page
    url = reverse("dashboard:approval_decide", args=[approval.pk])
    assert "decision must be one of" in operator_client.post(url, {"decision": "maybe"}, follow=True).content.decode()
    denied = operator_client.post(url, {"decision": "deny"}, follow=True)
    assert "Denied: web_fetch" in denied.content.decode()
    approval.refresh_from_db()
    assert (approval.status, approval.decided_by) == ("denied", f"dashboard:{operator.username}")
    again = operator_client.post(url, {"decision": "allow"}, HTTP_ACCEPT="application/json")
    assert again.status_code == 409 and "already decided" in again.json()["error"]


def test_cron_jobs_show_next_run_history_and_failed_delivery(operator_client, live, tenant, refusing_webhook):
    with httpx.Client(base_url=f"{live}/api/cron", headers=tenant.headers, timeout=30) as api:
        job = api.post("/jobs/", json={
            "name": "nightly digest", "agent": "assistant", "prompt": "summarize", "session_target": "isolated",
            "schedule": {"kind": "cron", "expr": "0 3 * * *", "tz": "Europe/Berlin"}, "deliver": refusing_webhook,
        }).json()
    listing = operator_client.get(reverse("dashboard:cron"), {"tenant": tenant.tenant.slug}).content.decode()
    assert "nightly digest" in listing and "cron “0 3 * * *” (Europe/Berlin)" in listing and "never ran" in listing

    page_url = reverse("dashboard:cron_job", args=[job["id"]])
    started = operator_client.post(reverse("dashboard:cron_job_run", args=[job["id"]]), follow=True)
    assert "Started a run of “nightly digest”" in started.content.decode()
    wait_until(lambda: CronRun.objects.filter(job_id=job["id"], delivery_status="failed").exists(),
               timeout=30, message="the delivery to fail")
    listing = operator_client.get(reverse("dashboard:cron"), {"tenant": tenant.tenant.slug}).content.decode()
    assert "succeeded" in listing and "delivery failed" in listing and "HTTP 404" in listing
    history = operator_client.get(page_url).content.decode()
    assert "run now" in history and "delivery failed" in history and "HTTP 404" in history

    disabled = operator_client.post(reverse("dashboard:cron_job_enabled", args=[job["id"]]), {"enabled": "0"}, follow=True)
    assert "is disabled" in disabled.content.decode() and ">Enable<" in disabled.content.decode()
    assert CronJob.objects.get(pk=job["id"]).enabled is False
    bad = operator_client.post(reverse("dashboard:cron_job_enabled", args=[job["id"]]), {"enabled": "yes"}, follow=True)
    assert "enabled must be 1" in bad.content.decode()
    operator_client.post(reverse("dashboard:cron_job_enabled", args=[job["id"]]), {"enabled": "1"})
    assert CronJob.objects.get(pk=job["id"]).enabled is True


def test_aborting_a_finished_run_says_so(operator_client, live, tenant):
    with httpx.Client(base_url=f"{live}/api", headers=tenant.headers, timeout=30) as api:
        session_id = api.post("/sessions/", json={"agent": "assistant"}).json()["id"]
        run_id = api.post(f"/sessions/{session_id}/messages/", json={"content": "hi"}).json()["run"]["id"]
        wait_until(lambda: api.get(f"/runs/{run_id}/").json()["status"] == "succeeded", timeout=30, message="the run")
    response = operator_client.post(reverse("dashboard:run_abort", args=[run_id]), HTTP_ACCEPT="application/json")
    assert response.status_code == 409 and "already ended (succeeded)" in response.json()["error"]
    page = operator_client.get(reverse("dashboard:run", args=[run_id])).content.decode()
    assert "Echo: hi" in page and "run.completed" in page and "Abort run" not in page


