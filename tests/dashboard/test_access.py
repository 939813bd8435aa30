"""Who gets into the dashboard: staff only, over HTTP and over its WebSocket; bad ids and forged posts."""

import json
import uuid

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

PAGES = ["dashboard:runs", "dashboard:sessions", "dashboard:approvals", "dashboard:cron"]


def ws_url(live: str) -> str:
    return live.replace("http://", "ws://") + "/ws/dashboard/"


def logged_in_cookie(user) -> str:
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}"


@pytest.fixture
def member():
    """A signed-in user without staff rights."""
    user = get_user_model().objects.create_user(username=f"member-{uuid.uuid4().hex[:6]}", password="pw")
    client = Client()
    client.force_login(user)
    return user, client


@pytest.mark.parametrize("name", PAGES)
def test_anonymous_visitors_are_sent_to_the_login_page(name):
    response = Client().get(reverse(name))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("dashboard:login") + "?next=")


def test_the_login_page_refuses_accounts_without_staff_rights(member):
    user, _ = member
    response = Client().post(reverse("dashboard:login"), {"username": user.username, "password": "pw"})
    assert response.status_code == 200
    assert "staff account" in response.content.decode()


def test_staff_log_in_and_land_on_the_runs_page(operator):
    client = Client()
    response = client.post(reverse("dashboard:login"), {"username": operator.username, "password": operator.password})
    assert response.status_code == 302 and response["Location"] == reverse("dashboard:runs")
    page = client.get(reverse("dashboard:runs")).content.decode()
    for link in ("Runs", "Sessions", "Approvals", "Cron", "Admin", "Log out"):
        assert f">{link}<" in page
    assert client.post(reverse("dashboard:logout")).status_code == 302
    assert client.get(reverse("dashboard:runs")).status_code == 302


@pytest.mark.parametrize("name", PAGES)
def test_signed_in_users_without_staff_rights_are_refused(member, name):
    _, client = member
    response = client.get(reverse(name))
    assert response.status_code == 403
    assert "not a staff account" in response.content.decode()


def test_unknown_ids_and_tenants_are_404(operator_client):
    missing = uuid.uuid4()
    for url in (reverse("dashboard:run", args=[missing]), reverse("dashboard:session", args=[missing]),
                reverse("dashboard:cron_job", args=[987654321])):
        response = operator_client.get(url)
        assert response.status_code == 404, url
    assert operator_client.get("/runs/not-a-uuid/").status_code == 404
    assert operator_client.post(reverse("dashboard:run_abort", args=[missing])).status_code == 404
    assert operator_client.post(reverse("dashboard:approval_decide", args=[missing]), {"decision": "allow"}).status_code == 404
    assert operator_client.get(reverse("dashboard:runs"), {"tenant": "no-such-tenant"}).status_code == 404
    assert operator_client.get(reverse("dashboard:sessions"), {"page": "0"}).status_code == 404


def test_a_post_without_the_csrf_token_is_refused(operator, tenant):
    from sessions.services import session_create

    session = session_create(tenant=tenant.tenant, agent=tenant.agent)
    client = Client(enforce_csrf_checks=True)
    client.force_login(operator.user)
    response = client.post(reverse("dashboard:session_send", args=[session.pk]), {"message": "hello"})
    assert response.status_code == 403
    assert not session.runs.exists()


def test_pages_only_answer_the_methods_they_serve(operator_client):
    assert operator_client.post(reverse("dashboard:runs")).status_code == 405
    assert operator_client.get(reverse("dashboard:run_abort", args=[uuid.uuid4()])).status_code == 405


def test_the_socket_is_refused_without_a_staff_session(live, member):
    with pytest.raises(InvalidStatus) as anonymous:
        connect(ws_url(live), open_timeout=10)
    assert anonymous.value.response.status_code == 403
    user, _ = member
    with pytest.raises(InvalidStatus) as not_staff:
        connect(ws_url(live), open_timeout=10, additional_headers={"Cookie": logged_in_cookie(user)})
    assert not_staff.value.response.status_code == 403


def test_the_socket_refuses_pages_of_other_sites(live, operator):
    headers = {"Cookie": logged_in_cookie(operator.user), "Origin": "https://evil.example"}
    with pytest.raises(InvalidStatus) as cross_site:
        connect(ws_url(live), open_timeout=10, additional_headers=headers)
    assert cross_site.value.response.status_code == 403


def test_the_socket_serves_staff_and_answers_bad_requests_clearly(live, operator):
    headers = {"Cookie": logged_in_cookie(operator.user), "Origin": live}
    with connect(ws_url(live), open_timeout=10, additional_headers=headers) as socket:
        socket.send(json.dumps({"follow": str(uuid.uuid4())}))
        assert json.loads(socket.recv(timeout=10))["message"].startswith("No run ")
        socket.send("not json")
        assert "JSON object" in json.loads(socket.recv(timeout=10))["message"]
        socket.send(json.dumps({"watch": "runs"}))
        frame = json.loads(socket.recv(timeout=10))
        assert frame["type"] == "runs" and "live-runs-table" in frame["html"]
