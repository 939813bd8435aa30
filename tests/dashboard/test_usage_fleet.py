"""The dashboard's usage and fleet pages, as an operator sees them: runs made through the gateway in their
own tenant's figures, the live worker and the queues' depths on the fleet page, and only staff let in."""

import re
import socket
import uuid

import httpx
import pytest
from celery import current_app
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from beamclaw_project.infra.queues import tenant_queue
from sessions.runs.kernel import RUN_STEP_TASK
from tenants.models import Tenant
from tests.conftest import wait_until
from tests.sessions.test_rest_api import wait_for_run


@pytest.fixture
def staff_client() -> Client:
    user = get_user_model().objects.create_user(username=f"operator-{uuid.uuid4().hex[:6]}", password="pw", is_staff=True)
    client = Client()
    client.force_login(user)
    return client


def runs_through_gateway(live: str, bundle, *contents: str) -> list[dict]:
    with httpx.Client(base_url=f"{live}/api", headers=bundle.headers, timeout=30) as api:
        session_id = api.post("/sessions/", json={"agent": "assistant"}).json()["id"]
        finished = []
        for content in contents:
            run = api.post(f"/sessions/{session_id}/messages/", json={"content": content}).json()["run"]
            finished.append(wait_for_run(api, run["id"]))
    return finished


def figure(page: str, name: str) -> str:
    return re.search(rf'<dd class="{name}">([^<]*)</dd>', page).group(1)


def test_runs_show_up_in_their_own_tenants_usage_only(live, make_tenant, staff_client):
    ours, theirs = make_tenant(), make_tenant()
    mine = runs_through_gateway(live, ours, "hello there", "and again", "this breaks [[status=400]]")
    other = runs_through_gateway(live, theirs, "someone else entirely")
    assert [run["status"] for run in mine] == ["succeeded", "succeeded", "failed"]

    page = staff_client.get("/usage/", {"tenant": ours.tenant.slug})
    assert page.status_code == 200
    html = page.content.decode()
    assert figure(html, "runs-total") == "3"
    tokens_in = sum(run["input_tokens"] for run in mine)
    tokens_out = sum(run["output_tokens"] for run in mine)
    assert tokens_in and tokens_out
    assert figure(html, "tokens-total") == f"{tokens_in} / {tokens_out}"
    assert figure(html, "failed-total") == "1"
    assert mine[2]["error"] and mine[2]["error"][:40] in html, "the latest failure's message is shown"
    assert html.count("<svg role=\"img\"") == 3, "tokens, runs per minute and failures, drawn inline"
    assert "3 runs, at most" in html, "the runs-per-minute chart says its figures in words too"
    assert theirs.tenant.slug not in html.split("</select>", 1)[1], "no other tenant on a tenant's page"

    every = staff_client.get("/usage/").content.decode()
    section = every.split(f'id="usage-{theirs.tenant.slug}"', 1)[1].split("</section>", 1)[0]
    assert figure(section, "runs-total") == "1"
    assert figure(section, "tokens-total") == f"{other[0]['input_tokens']} / {other[0]['output_tokens']}"


def test_the_usage_page_costs_the_same_queries_for_more_tenants(live, make_tenant, staff_client):
    runs_through_gateway(live, make_tenant(), "first tenant")
    with CaptureQueriesContext(connection) as before:
        assert staff_client.get("/usage/").status_code == 200
    runs_through_gateway(live, make_tenant(), "second tenant")
    runs_through_gateway(live, make_tenant(), "third tenant")
    with CaptureQueriesContext(connection) as after:
        assert staff_client.get("/usage/").status_code == 200
    assert len(after) == len(before) <= 8, [q["sql"] for q in after.captured_queries]


def test_the_fleet_page_lists_the_running_worker(live, worker, staff_client):
    with CaptureQueriesContext(connection) as queries:
        page = staff_client.get("/fleet/")
    assert page.status_code == 200
    assert len(queries) <= 6, "a fixed number of queries for every tenant at once"
    html = page.content.decode()
    assert f"{worker['proc'].name}@{socket.gethostname()}" in html
    assert 'data-queue="system"' in html
    assert 'hx-trigger="every 5s"' in html, "the panel refreshes itself"

    panel = staff_client.get("/fleet/", headers={"HX-Request": "true"}).content.decode()
    assert panel.lstrip().startswith('<div id="fleet-panel"'), "a refresh swaps the panel alone"


def test_queue_depth_counts_the_messages_waiting_in_a_tenant_queue(live, staff_client):
    # A suspended tenant's queue is one no worker consumes (tenants/queues.py), so what is sent there waits.
    slug = f"t-{uuid.uuid4().hex[:10]}"
    Tenant.objects.create(slug=slug, status=Tenant.Status.SUSPENDED)
    queue = tenant_queue(slug)
    for step in range(2):
        current_app.send_task(RUN_STEP_TASK, args=[str(uuid.uuid4()), step], queue=queue)
    current_app.send_task(RUN_STEP_TASK, args=[str(uuid.uuid4()), 0], queue=queue, priority=6)
    try:
        html = staff_client.get("/fleet/", {"tenant": slug}).content.decode()
        assert re.search(rf'data-queue="{re.escape(queue)}">\s*3\s*<', html), html
    finally:
        with current_app.connection_for_write() as conn:
            conn.default_channel.queue_purge(queue)


@pytest.mark.parametrize("path", ["/usage/", "/fleet/"])
def test_only_staff_get_in(path):
    anonymous = Client().get(path)
    assert anonymous.status_code == 302 and anonymous["Location"].startswith("/login/")

    user = get_user_model().objects.create_user(username=f"user-{uuid.uuid4().hex[:6]}", password="pw")
    client = Client()
    client.force_login(user)
    assert client.get(path).status_code == 403


@pytest.mark.parametrize("path", ["/usage/", "/fleet/"])
def test_an_unknown_tenant_is_a_404_that_says_so(path, staff_client):
    page = staff_client.get(path, {"tenant": "no-such-tenant"})
    assert page.status_code == 404
    assert "There is no tenant with the slug <code>no-such-tenant</code>" in page.content.decode()


def test_the_fleet_page_counts_a_tenants_run_waiting_for_approval(live, make_tenant, staff_client):
    guarded = make_tenant(approval={"mode": "always", "allowlist": []})
    with httpx.Client(base_url=f"{live}/api", headers=guarded.headers, timeout=30) as api:
        session_id = api.post("/sessions/", json={"agent": "assistant"}).json()["id"]
        content = 'look around [[tool=exec:{"command": "ls"}]]'
        run = api.post(f"/sessions/{session_id}/messages/", json={"content": content}).json()["run"]
        wait_until(lambda: api.get(f"/runs/{run['id']}/").json()["status"] == "awaiting_approval", timeout=30,
                   message="the run to wait for its approval")

        html = staff_client.get("/fleet/", {"tenant": guarded.tenant.slug}).content.decode()
        row = html.split(f'data-queue="{tenant_queue(guarded.tenant.slug)}"', 1)[1].split("</tr>", 1)[0]
        # waiting messages, queued runs, running, awaiting approval, pending approvals
        assert re.findall(r">\s*(\d+)\s*<", row) == ["0", "0", "0", "1", "1"], row

        [approval] = api.get("/approvals/", params={"status": "pending"}).json()["results"]
        api.post(f"/approvals/{approval['id']}/deny/", json={})
        wait_for_run(api, run["id"])
