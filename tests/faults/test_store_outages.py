"""Redis restarted empty and PostgreSQL stopped, in the middle of streaming runs, as an operator's bad day
would have it. Each test prints a report line: runs affected, runs completed exactly once, seconds until
/health was green again (figures, not assertions)."""

import json
import time
import uuid
from http.server import BaseHTTPRequestHandler

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.conftest import http_server, wait_until
from tests.faults.clients import StreamedReply
from tests.faults.conftest import WEBHOOK_HOST, seconds_until

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]

def _exactly_once(stack, reply: StreamedReply) -> bool:
    """The run succeeded, and its session's transcript holds its user message once and one reply per step."""
    (status,) = stack.query("SELECT status FROM agent_sessions_run WHERE id = %s", reply.run_id)[0]
    rows = stack.query(
        "SELECT role, step, content::text FROM agent_sessions_message WHERE session_id = "
        "(SELECT session_id FROM agent_sessions_run WHERE id = %s)", reply.run_id,
    )
    users = [r for r in rows if r[0] == "user" and reply.prompt in r[2]]
    steps = [r[1] for r in rows if r[0] == "assistant"]
    return status == "succeeded" and len(users) == 1 and len(steps) == len(set(steps)) >= 1


def _report(stack, fault: str, replies: list[StreamedReply], exactly_once: int, healthy_after: float) -> None:
    line = (
        f"{fault}: runs affected {len(replies)}, completed exactly once {exactly_once}, "
        f"healthy again {healthy_after:.1f}s after the store was back"
    )
    print(f"\n[fault report] {line}")
    with open(stack.log_dir / "fault-report.txt", "a") as report:
        report.write(line + "\n")


def test_redis_restarted_empty_mid_stream(stack):
    tenant = stack.tenant()
    replies = [StreamedReply(stack.web_url, tenant.headers, f"redis restart {n} alpha beta gamma").start() for n in range(4)]
    wait_until(lambda: all(r.chunks >= 4 for r in replies), timeout=60, message="every stream to be under way")

    # A REST client following the first run drops its connection before the restart; it will resume with
    # the Last-Event-ID it had.
    last_event_id = None
    with httpx.stream("GET", f"{stack.web_url}/api/runs/{replies[0].run_id}/events/", headers=tenant.headers, timeout=30) as events:
        for line in events.iter_lines():
            if line.startswith("id: "):
                last_event_id = line[4:]
            if line.startswith("event: text.delta"):
                break
    assert last_event_id is not None

    # A WebSocket client following a session: its subscription lived in Redis too.
    session_id = httpx.post(f"{stack.web_url}/api/sessions/", json={"agent": "default"}, headers=tenant.headers).json()["id"]
    socket = connect(stack.web_url.replace("http://", "ws://") + "/ws/", open_timeout=10)
    socket.send(json.dumps({"type": "req", "id": "c", "method": "connect", "params": {"token": tenant.api_key}}))
    assert json.loads(socket.recv(timeout=10))["ok"]
    socket.send(json.dumps({"type": "req", "id": "s", "method": "sessions.subscribe", "params": {"session": session_id}}))
    assert json.loads(socket.recv(timeout=10))["ok"]

    stack.redis.restart_empty()
    healthy_after = seconds_until(stack.healthy, timeout=60, message="/health to be ok")

    for reply in replies:
        reply.join()
        # The deterministic fake model writes the same reply again, so each client gets the rest of it.
        assert reply.errors == [], reply.errors
        assert reply.text == f"Echo: {reply.prompt}", reply.text
        assert reply.finish_reason == "stop" and reply.done
    assert all(worker.alive for worker in stack.workers), "a worker died when Redis restarted"

    # The dropped client resumes after the stream it knew is gone: the ending comes from Postgres.
    resumed = httpx.get(
        f"{stack.web_url}/api/runs/{replies[0].run_id}/events/",
        headers={**tenant.headers, "Last-Event-ID": last_event_id}, timeout=60,
    )
    frames = [json.loads(line[6:]) for line in resumed.text.splitlines() if line.startswith("data: ")]
    assert "event: run.completed" in resumed.text
    assert frames[-1]["text"] == f"Echo: {replies[0].prompt}"

    exactly_once = sum(_exactly_once(stack, reply) for reply in replies)
    assert exactly_once == len(replies)

    # The socket survived the restart and still follows its session: a run started there now reaches it.
    posted = httpx.post(
        f"{stack.web_url}/api/sessions/{session_id}/messages/", json={"content": "seen by the socket"}, headers=tenant.headers,
    )
    assert posted.status_code == 202, posted.text
    seen = []
    while not seen or seen[-1].get("event") != "run.completed":
        seen.append(json.loads(socket.recv(timeout=30)))
    assert seen[-1]["payload"]["run_id"] == posted.json()["run"]["id"]
    assert seen[-1]["payload"]["text"] == "Echo: seen by the socket"
    socket.close()
    # And the gateway works as before, with no process restarted.
    after = httpx.post(
        f"{stack.web_url}/v1/chat/completions", headers=tenant.headers, timeout=60,
        json={"model": "default", "messages": [{"role": "user", "content": "after the restart"}]},
    )
    assert after.status_code == 200 and after.json()["choices"][0]["message"]["content"] == "Echo: after the restart"
    _report(stack, "Redis restarted empty mid-stream", replies, exactly_once, healthy_after)


def _websocket_connect_refusal(stack, tenant) -> tuple[dict, int | None]:
    ws_url = stack.web_url.replace("http://", "ws://") + "/ws/"
    with connect(ws_url, open_timeout=10, close_timeout=5) as socket:
        socket.send(json.dumps({"type": "req", "id": "c1", "method": "connect", "params": {"token": tenant.api_key}}))
        frame = json.loads(socket.recv(timeout=30))
        try:
            socket.recv(timeout=10)
        except ConnectionClosed as closed:
            return frame, closed.rcvd.code if closed.rcvd else None
    return frame, None


def test_postgres_stopped_and_started_mid_stream(stack):
    tenant = stack.tenant()
    reply = StreamedReply(stack.web_url, tenant.headers, "postgres outage one two three").start()
    wait_until(lambda: reply.chunks >= 4, timeout=60, message="the stream to be under way")

    stack.postgres.stop()
    try:
        chat = httpx.post(
            f"{stack.web_url}/v1/chat/completions", headers=tenant.headers, timeout=60,
            json={"model": "default", "messages": [{"role": "user", "content": "during the outage"}]},
        )
        assert chat.status_code == 503 and chat.headers["Retry-After"].isdigit()
        assert chat.json()["error"]["type"] == "service_unavailable", chat.text

        sessions = httpx.get(f"{stack.web_url}/api/sessions/", headers=tenant.headers, timeout=60)
        assert sessions.status_code == 503 and sessions.headers["Retry-After"].isdigit()
        assert sessions.json()["code"] == "service_unavailable" and "PostgreSQL" in sessions.json()["detail"]

        frame, close_code = _websocket_connect_refusal(stack, tenant)
        assert frame["ok"] is False and frame["error"]["code"] == "unavailable", frame
        assert close_code == 4503

        health = httpx.get(f"{stack.web_url}/health", timeout=30)
        assert health.status_code == 503 and health.json()["checks"]["database"]["ok"] is False
    finally:
        stack.postgres.start()
    healthy_after = seconds_until(stack.healthy, timeout=60, message="/health to be ok")

    reply.join()
    assert reply.errors == [], reply.errors
    assert reply.text == f"Echo: {reply.prompt}" and reply.finish_reason == "stop"
    assert all(worker.alive for worker in stack.workers)
    assert _exactly_once(stack, reply)
    # Nothing needed a restart: the same processes serve new requests.
    after = httpx.post(
        f"{stack.web_url}/v1/chat/completions", headers=tenant.headers, timeout=60,
        json={"model": "default", "messages": [{"role": "user", "content": "after the outage"}]},
    )
    assert after.status_code == 200, after.text
    _report(stack, "PostgreSQL stopped and started mid-stream", [reply], int(_exactly_once(stack, reply)), healthy_after)


def test_a_delivery_whose_retry_was_lost_with_redis_is_sent_again(stack):
    """A cron job's webhook answers 503 and asks for a retry in 250 s; Redis restarts meanwhile, taking the
    retry with it. The sweeper finds the pending delivery without a lease and sends it again at once."""
    received = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            received.append(time.monotonic())
            self.send_response(503 if len(received) == 1 else 200)
            self.send_header("Retry-After", "250")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    tenant = stack.tenant()
    api = httpx.Client(base_url=f"{stack.web_url}/api/cron", headers=tenant.headers, timeout=30)
    with http_server(Receiver, WEBHOOK_HOST) as server:
        job = api.post("/jobs/", json={
            "name": "lost delivery", "agent": "default", "prompt": "report", "session_target": "isolated",
            "enabled": False, "schedule": {"kind": "every", "every": "1h"},
            "deliver": {"kind": "webhook", "url": f"http://{WEBHOOK_HOST}:{server.server_address[1]}/hook"},
        })
        assert job.status_code == 201, job.text
        cron_run_id = api.post(f"/jobs/{job.json()['id']}/run/").json()["id"]
        wait_until(lambda: len(received) == 1, timeout=60, message="the first, refused delivery attempt")

        stack.redis.restart_empty()
        wait_until(
            lambda: stack.query("SELECT delivery_status FROM cron_cronrun WHERE id = %s", cron_run_id)[0][0] == "delivered",
            timeout=90, message="the delivery to be sent again and accepted",
        )
    assert len(received) == 2  # within 90 s: not the retry the webhook asked for in 250 s


def test_with_redis_down_a_made_up_key_is_still_refused_and_a_real_one_is_told_to_retry(stack):
    # A request is counted against its key's rate while the key is looked up (tenants/limits.py): with Redis
    # down, a key nobody has is refused for what it is (401, as before the count), and a real key's request,
    # which cannot be counted, is answered 503 with Retry-After, not a 500.
    tenant = stack.tenant()
    made_up = {"Authorization": f"Bearer bc_{uuid.uuid4().hex}"}
    stack.redis.stop()
    try:
        refused = httpx.get(f"{stack.web_url}/v1/models", headers=made_up, timeout=60)
        waiting = httpx.get(f"{stack.web_url}/v1/models", headers=tenant.headers, timeout=60)
    finally:
        stack.redis.start()
    assert refused.status_code == 401, refused.text
    assert waiting.status_code == 503 and waiting.headers["Retry-After"].isdigit(), waiting.text
    wait_until(lambda: httpx.get(f"{stack.web_url}/v1/models", headers=tenant.headers, timeout=10).status_code == 200,
               timeout=60, message="the key to work again once Redis is back")
