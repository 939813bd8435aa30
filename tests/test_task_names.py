"""What an operator sees in Flower (a real one, as the Procfile starts it): it asks for its password, each
task says whose work it is (`tenant=<slug> run=<id> step=<n>`, beamclaw_project/infra/tasks.py), and the
workers' housekeeping puts nothing in its task list (the cron sweeper runs on the worker, not as a task).
A worker publishes the task events a monitor asked for in batches, off its steps' path, and those still
waiting when it stops on its way out."""

import base64
import json
import socket
import sys
import uuid

import httpx
import pytest
import redis
from django.conf import settings

from beamclaw_project.celery import app
from beamclaw_project.infra.redis import redis_client
from sessions.models import Run
from tests.conftest import wait_until
from tests.procs import Process, free_port


@pytest.fixture
def flower(service_env, log_dir, worker):
    """A Flower on a free loopback port with basic auth, watching the shared worker; (base URL, credentials)."""
    port = free_port()
    auth = ("admin", uuid.uuid4().hex)
    env = {**service_env, "FLOWER_BASIC_AUTH": ":".join(auth)}
    argv = [sys.executable, "-m", "celery", "-A", "beamclaw_project", "flower", f"--port={port}", "--address=127.0.0.1"]
    proc = Process(f"flower-{port}", argv, env, log_dir).start()
    url = f"http://127.0.0.1:{port}"

    def up():
        proc.ensure_alive()
        try:
            return httpx.get(f"{url}/api/workers", auth=auth, timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(up, timeout=30, interval=0.2, message="Flower")
    # Flower turns the workers' task events on every 5 s (for workers started after it); the first time
    # is 5 s after its start. Do now what it would do then, and hear every worker say it is done.
    workers = app.control.ping(timeout=2)
    enabled = app.control.broadcast("enable_events", reply=True, timeout=5, limit=len(workers))
    assert len(enabled) == len(workers) > 0, enabled
    yield url, auth
    proc.stop()


def send(live: str, bundle, content: str) -> str:
    session = httpx.post(f"{live}/api/sessions/", headers=bundle.headers, json={"agent": "assistant"}).json()
    response = httpx.post(f"{live}/api/sessions/{session['id']}/messages/", headers=bundle.headers, json={"content": content})
    assert response.status_code == 202, response.text
    return response.json()["run"]["id"]


def flower_tasks(url: str, auth) -> list[dict]:
    return list(httpx.get(f"{url}/api/tasks", auth=auth, timeout=10).json().values())


def run_tasks_seen(url: str, auth, run_id: str) -> list[dict]:
    """The run's tasks in Flower, once its last step has succeeded there."""
    tasks = [t for t in flower_tasks(url, auth) if f"run={run_id}" in (t.get("args") or "")]
    done = Run.objects.get(pk=run_id).status == Run.Status.SUCCEEDED
    return tasks if done and tasks and all(t["state"] == "SUCCESS" for t in tasks) else []


def test_flower_asks_for_its_password(flower):
    url, (user, password) = flower
    assert httpx.get(f"{url}/").status_code == 401
    assert httpx.get(f"{url}/api/tasks", auth=(user, "wrong")).status_code == 401
    assert httpx.get(f"{url}/", auth=(user, password)).status_code == 200


def test_each_task_names_its_tenant_and_run_and_housekeeping_stays_out_of_the_list(live, flower, tenant):
    url, auth = flower
    slug = tenant.tenant.slug
    first = send(live, tenant, "hello")
    tasks = wait_until(lambda: run_tasks_seen(url, auth, first), timeout=30, message="the run's tasks in Flower")
    # The first step is sent by the web process, the others by workers: both label it.
    assert [t["name"] for t in tasks] == ["sessions.run_step"]
    assert tasks[0]["args"] == f"tenant={slug} run={first} step=0"

    # A sweeper period starts now (its fleet-wide claim is taken again by the worker that runs it); then a
    # second run, which Flower lists after whatever the sweep would have sent.
    redis_client().delete("bc:housekeeping:cron_sweep")
    wait_until(lambda: redis_client().exists("bc:housekeeping:cron_sweep"), timeout=15, message="a sweeper period")
    second = send(live, tenant, "hello again")
    wait_until(lambda: run_tasks_seen(url, auth, second), timeout=30, message="the second run's tasks in Flower")
    listed = flower_tasks(url, auth)
    assert "cron.sweep" not in {t["name"] for t in listed}
    assert all(t["args"] for t in listed), [t for t in listed if not t["args"]]  # each names what it works on


def task_event_messages(pubsub) -> list[list[dict]]:
    """The task event messages published so far, each as the list of events it carries."""
    messages = []
    while (message := pubsub.get_message(timeout=0.5)) is not None:
        if message["type"] != "pmessage":  # the subscription's confirmation
            continue
        envelope = json.loads(message["data"])
        body = envelope["body"]
        if envelope["properties"].get("body_encoding") == "base64":
            body = base64.b64decode(body)
        events = json.loads(body)
        messages.append(events if isinstance(events, list) else [events])
    return messages


def test_a_monitored_worker_publishes_task_events_off_its_steps_path_and_as_it_stops(live, fleet, tenant):
    # This test lengthens the batching interval, for itself: an hour, so that nothing the worker does while
    # the run goes through can publish the run's events; only its stop can.
    name = f"events-{uuid.uuid4().hex[:4]}"
    proc = fleet(name, env={"BEAMCLAW_TASK_EVENTS_FLUSH_SECONDS": "3600"})
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    pubsub = broker.pubsub()
    # kombu's fanout over Redis: one channel per routing key, named for the broker's database.
    pubsub.psubscribe(f"/{broker.connection_pool.connection_kwargs.get('db', 0)}.celeryev/task.*")
    # As Flower asks, once the worker answers its remote control.
    hostname = f"{name}@{socket.gethostname()}"
    wait_until(lambda: app.control.ping(destination=[hostname], timeout=1), timeout=30, message="the worker's reply")
    enabled = app.control.broadcast("enable_events", reply=True, timeout=5, destination=[hostname])
    assert len(enabled) == 1, enabled

    run_id = send(live, tenant, "hello")
    wait_until(lambda: Run.objects.get(pk=run_id).status == Run.Status.SUCCEEDED, timeout=30, message="the run")
    # Celery alone would have published the step's task-received and task-started events one by one as the
    # step began, before the run could succeed.
    assert task_event_messages(pubsub) == []

    proc.stop()
    published = wait_until(lambda: task_event_messages(pubsub), timeout=15, message="the events, as the worker stops")
    pubsub.close()
    steps = {e["uuid"] for events in published for e in events if f"run={run_id}" in (e.get("args") or "")}
    assert len(steps) == 1, published
    step_events = [[e["type"] for e in events if e.get("uuid") in steps] for events in published]
    assert [types for types in step_events if types] == [["task-received", "task-started", "task-succeeded"]]
