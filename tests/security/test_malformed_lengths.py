"""Values too long for their column, and NULs in bodies of any Content-Type: each is a 400 naming the field
and the limit, never a 500, and nothing already stored is lost (docs/gateway.md "Limits and malformed input")."""

import uuid

import httpx
import pytest
from django.utils import timezone

from sessions.models import AgentSession, Message
from sessions.services import SESSION_KEY_MAX, session_archive_key

LONG_SLUG = "a" + "-" * 61 + "z"  # 63 characters, the most a slug may have
LONG_PREFIX = f"agent:{LONG_SLUG}:"  # 70 characters
NAME_MAX = SESSION_KEY_MAX - len(LONG_PREFIX)  # 185


@pytest.fixture
def api(live, tenant):
    with httpx.Client(base_url=f"{live}/api", headers=tenant.headers, timeout=30) as client:
        yield client


@pytest.fixture
def long_agent(api):
    response = api.post("/agents/", json={"slug": LONG_SLUG})
    assert response.status_code == 201, response.text
    return LONG_SLUG


def chat(live, tenant, *, model="assistant", headers=None, **body):
    return httpx.post(
        f"{live}/v1/chat/completions", timeout=60, headers={**tenant.headers, **(headers or {})},
        json={"model": model, "messages": [{"role": "user", "content": "hi"}], **body},
    )


# 1. A NUL in a body sent as something other than application/json.

NUL_BODY = '{"model": "assistant", "messages": [{"role": "user", "content": "a\\u0000b"}]}'


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_nul_in_a_chat_body_of_any_content_type_is_400(live, tenant, content_type):
    headers = {**tenant.headers, **({"Content-Type": content_type} if content_type else {})}
    request = httpx.Request("POST", f"{live}/v1/chat/completions", content=NUL_BODY.encode(), headers=headers)
    assert request.headers.get("Content-Type") == content_type  # httpx adds none for raw bytes
    with httpx.Client(timeout=30) as client:
        response = client.send(request)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "nul_character"
    assert response.json()["error"]["param"] == "messages"
    assert "NUL character" in response.json()["error"]["message"]


def test_nul_in_a_rest_body_of_another_content_type_is_refused_not_500(api):
    response = api.post("/sessions/", content=b'{"agent": "assistant", "key": "a\\u0000"}', headers={"Content-Type": "text/plain"})
    assert response.status_code == 400 and response.json()["code"] == "nul_character", response.text


def test_an_escaped_backslash_before_u0000_is_not_a_nul(api):
    """JSON `\\\\u0000` is a backslash and the text u0000: storable, so not refused."""
    response = api.post("/sessions/", content=b'{"agent": "assistant", "key": "a\\\\u0000"}', headers={"Content-Type": "application/json"})
    assert response.status_code == 201, response.text
    assert response.json()["key"] == "agent:assistant:a\\u0000"


# 2. Session keys: the whole key agent:<agent>:<name> fits the column or is a 400 naming the limit.


def test_rest_session_key_too_long_for_the_agent_is_400_naming_key_and_limit(api, long_agent):
    response = api.post("/sessions/", json={"agent": long_agent, "key": "k" * 200})
    assert response.status_code == 400, response.text
    message = response.json()["key"][0]
    assert str(SESSION_KEY_MAX) in message and str(NAME_MAX) in message, message

    full = api.post("/sessions/", json={"agent": long_agent, "key": LONG_PREFIX + "k" * (NAME_MAX + 1)})
    assert full.status_code == 400 and str(SESSION_KEY_MAX) in full.json()["key"][0], full.text

    longest = api.post("/sessions/", json={"agent": long_agent, "key": "k" * NAME_MAX})
    assert longest.status_code == 201, longest.text
    assert len(longest.json()["key"]) == SESSION_KEY_MAX


def test_rest_session_key_longer_than_the_column_is_400(api):
    response = api.post("/sessions/", json={"agent": "assistant", "key": "k" * 1000})
    assert response.status_code == 400 and "key" in response.json(), response.text


def test_openai_user_too_long_for_the_agent_is_400_naming_user(live, tenant, long_agent):
    response = chat(live, tenant, model=long_agent, user="u" * 200)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "user" and str(SESSION_KEY_MAX) in error["message"] and str(NAME_MAX) in error["message"]
    assert not AgentSession.objects.filter(tenant=tenant.tenant, agent__slug=long_agent).exists()


def test_openai_session_header_too_long_is_400_naming_the_header(live, tenant, long_agent):
    response = chat(live, tenant, model=long_agent, headers={"X-Session-Key": "h" * (NAME_MAX + 1)})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "X-Session-Key"
    absurd = chat(live, tenant, headers={"X-Session-Key": "h" * 8000})
    assert absurd.status_code == 400 and absurd.json()["error"]["param"] == "X-Session-Key", absurd.text


# 3. Reset of a session whose key is as long as a key may be.


def test_reset_of_a_session_with_the_longest_key_archives_everything(live, tenant, api, long_agent):
    name = "r" * NAME_MAX
    answered = chat(live, tenant, model=long_agent, user=name)
    assert answered.status_code == 200, answered.text
    session = AgentSession.objects.get(tenant=tenant.tenant, key=LONG_PREFIX + name)
    assert len(session.key) == SESSION_KEY_MAX
    before = list(Message.objects.filter(session=session).order_by("seq").values_list("seq", "role", "content"))
    assert len(before) == 2

    archives = []
    for _ in range(2):
        response = api.post(f"/sessions/{session.pk}/reset/")
        assert response.status_code == 200, response.text
        archives.append(AgentSession.objects.get(pk=response.json()["archived_session"]))
    first, second = archives
    assert all(len(a.key) <= SESSION_KEY_MAX and a.key.startswith(LONG_PREFIX) for a in archives)
    assert first.key != second.key
    assert list(Message.objects.filter(session=first).order_by("seq").values_list("seq", "role", "content")) == before
    assert api.get(f"/sessions/{session.pk}/").json()["key"] == LONG_PREFIX + name


def test_archive_keys_of_long_keys_sharing_a_start_differ():
    now = timezone.now()
    a, b = "agent:x:" + "n" * 246 + "a", "agent:x:" + "n" * 246 + "b"
    assert len(a) == SESSION_KEY_MAX
    assert session_archive_key(a, now) != session_archive_key(b, now)
    assert max(len(session_archive_key(a, now)), len(session_archive_key(b, now))) <= SESSION_KEY_MAX
    short = "agent:x:main"
    assert session_archive_key(short, now) == f"{short}#{now:%Y%m%dT%H%M%S.%f}"


# 4. Every writable string of the REST API, and the headers /v1 reads, sent far too long.

TOO_LONG = "x" * 5000


def _exec_approval(api) -> str:
    assert api.patch("/agents/assistant/", json={"approval": {"mode": "always", "allowlist": []}}).status_code == 200
    pending = api.post("/tools/invoke", json={"agent": "assistant", "tool": "exec", "input": {"command": "true"}})
    assert pending.status_code == 202, pending.text
    return pending.json()["id"]


def _cron_job(**changes) -> dict:
    job = {"name": "n", "agent": "assistant", "prompt": "p", "schedule": {"kind": "every", "every": "1h"}}
    for path, value in changes.items():
        target, *rest = path.split(".")
        if rest:
            job[target] = {**(job.get(target) or {}), rest[0]: value}
        else:
            job[target] = value
    return job


CASES = {
    "agent slug": ("POST", "/agents/", {"slug": TOO_LONG}, "slug"),
    "agent name": ("POST", "/agents/", {"slug": "fresh", "name": TOO_LONG}, "name"),
    "agent model": ("POST", "/agents/", {"slug": "fresh", "model": TOO_LONG}, "model"),
    "agent provider": ("POST", "/agents/", {"slug": "fresh", "provider": TOO_LONG}, "provider"),
    "agent name (PATCH)": ("PATCH", "/agents/assistant/", {"name": TOO_LONG}, "name"),
    "agent model (PATCH)": ("PATCH", "/agents/assistant/", {"model": TOO_LONG}, "model"),
    "api key name": ("POST", "/keys/", {"name": TOO_LONG}, "name"),
    "session agent": ("POST", "/sessions/", {"agent": TOO_LONG}, "agent"),
    "session key": ("POST", "/sessions/", {"agent": "assistant", "key": TOO_LONG}, "key"),
    "session queue_mode": ("POST", "/sessions/", {"agent": "assistant", "queue_mode": TOO_LONG}, "queue_mode"),
    "session queue_mode (PATCH)": ("PATCH", "/sessions/{session}/", {"queue_mode": TOO_LONG}, "queue_mode"),
    "message mode": ("POST", "/sessions/{session}/messages/", {"content": "hi", "mode": TOO_LONG}, "mode"),
    "cron name": ("POST", "/cron/jobs/", _cron_job(name=TOO_LONG), "name"),
    "cron agent": ("POST", "/cron/jobs/", _cron_job(agent=TOO_LONG), "agent"),
    "cron session_target": ("POST", "/cron/jobs/", _cron_job(session_target=TOO_LONG), "session_target"),
    "cron schedule.every": ("POST", "/cron/jobs/", _cron_job(**{"schedule.every": TOO_LONG}), "schedule"),
    "cron schedule.expr": ("POST", "/cron/jobs/", _cron_job(schedule={"kind": "cron", "expr": TOO_LONG}), "schedule"),
    "cron schedule.tz": (
        "POST", "/cron/jobs/", _cron_job(schedule={"kind": "cron", "expr": "0 9 * * *", "tz": TOO_LONG}), "schedule",
    ),
    "cron deliver.url": ("POST", "/cron/jobs/", _cron_job(deliver={"url": "https://example.com/" + TOO_LONG}), "deliver"),
    "tool invoke agent": ("POST", "/tools/invoke", {"agent": TOO_LONG, "tool": "exec", "input": {}}, "agent"),
    "tool invoke tool": ("POST", "/tools/invoke", {"agent": "assistant", "tool": TOO_LONG, "input": {}}, "tool"),
    "approval approve reason": ("POST", "/approvals/{approval}/approve/", {"reason": TOO_LONG}, "reason"),
    "approval deny reason": ("POST", "/approvals/{approval}/deny/", {"reason": TOO_LONG}, "reason"),
}


@pytest.mark.parametrize("case", CASES)
def test_an_over_long_string_field_is_400_naming_it(api, case):
    method, path, body, field = CASES[case]
    ids = {}
    if "{session}" in path:
        ids["session"] = api.post("/sessions/", json={"agent": "assistant"}).json()["id"]
    if "{approval}" in path:
        ids["approval"] = _exec_approval(api)
    response = api.request(method, path.format(**ids), json=body)
    assert response.status_code == 400, (case, response.status_code, response.text[:300])
    assert field in response.json(), (case, response.text[:300])
    assert api.get("/agents/").status_code == 200


@pytest.mark.parametrize(
    "header, value",
    [("X-Session-Key", TOO_LONG), ("X-Queue-Mode", TOO_LONG), ("Idempotency-Key", TOO_LONG)],
)
def test_an_over_long_openai_header_is_400_naming_it(live, tenant, header, value):
    response = chat(live, tenant, headers={header: value})
    assert response.status_code == 400, (header, response.text[:300])
    assert response.json()["error"]["param"] == header, response.text[:300]


def test_an_over_long_session_filter_is_just_no_match(api):
    response = api.get("/sessions/", params={"key": TOO_LONG, "agent": TOO_LONG})
    assert response.status_code == 200 and response.json()["count"] == 0, response.text


def test_unknown_session_ids_of_any_length_are_404(api):
    assert api.get(f"/sessions/{uuid.uuid4()}/").status_code == 404
    assert api.get(f"/sessions/{TOO_LONG}/").status_code == 404
