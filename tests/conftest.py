"""Shared fixtures: the real processes a user would run, started once per test session.

- Postgres: a database of its own (`beamclaw_test`), recreated and migrated at the start.
- Redis: db 15, flushed at the start.
- The fake Anthropic and OpenAI-compatible servers (tests/fakes), a real Celery worker (`manage.py worker`) and a real Daphne.

Tests do not run inside a rolled-back transaction: the worker and Daphne are other processes and must
see committed rows. Each test makes its own tenant (unique slug), which is all the isolation needed.
"""

import base64
import itertools
import json
import os
import socket
import sys
import threading
import time
import uuid
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import psycopg
import pytest
from celery import current_app
from django.conf import settings
from psycopg import sql

from tests.procs import Process, free_port

ROOT = Path(__file__).resolve().parent.parent
# The one non-public address the workers of a test session may reach (the outbound address policy refuses
# loopback otherwise): receivers playing webhooks and callback URLs listen here.
WEBHOOK_HOST = "127.0.0.9"
os.environ["BEAMCLAW_OUTBOUND_ALLOW_CIDRS"] = f"{WEBHOOK_HOST}/32"


def wait_until(predicate, *, timeout: float, interval: float = 0.05, message: str = "condition"):
    """Poll until predicate() is truthy; return its value. Fails the test with `message` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


@contextmanager
def http_server(handler, host: str = "127.0.0.1", port: int = 0):
    """A threaded HTTP server playing an outside peer (webhook receiver, web site); `hits` is there for
    handlers that record what was asked of them."""
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    server.hits = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def callback_receiver():
    """A callback URL's server on WEBHOOK_HOST, answering 200: `hits` holds each request's headers, raw body
    and parsed JSON body; `url` is where to point a channel."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.server.hits.append({"headers": dict(self.headers), "raw": raw, "body": json.loads(raw)})
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    with http_server(Handler, WEBHOOK_HOST) as server:
        server.url = f"http://{WEBHOOK_HOST}:{server.server_address[1]}/callback"
        yield server


def _recreate_test_database():
    db = settings.DATABASES["default"]
    params = {k: v for k, v in {"host": db.get("HOST"), "port": db.get("PORT"), "user": db.get("USER"), "password": db.get("PASSWORD")}.items() if v}
    with psycopg.connect(dbname="postgres", autocommit=True, **params) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db["NAME"])))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db["NAME"])))


@pytest.fixture(scope="session")
def django_db_setup(django_db_blocker):
    from django.core.management import call_command
    from django.db import connections

    with django_db_blocker.unblock():
        connections.close_all()
        _recreate_test_database()
        call_command("migrate", verbosity=0)


@pytest.fixture(autouse=True)
def _db_access(django_db_setup, django_db_blocker):
    with django_db_blocker.unblock():
        yield


@pytest.fixture(scope="session")
def redis_clean():
    from beamclaw_project.infra.redis import redis_client

    redis_client().flushdb()


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory) -> Path:
    path = Path(os.environ.get("BEAMCLAW_TEST_LOG_DIR") or tmp_path_factory.mktemp("logs"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def fake_server(name: str, module: str, log_dir: Path, host: str = "127.0.0.1"):
    """A fake outside service from tests/fakes (`python -m <module> --host H --port P`), once its
    /_fake/health answers; yields its base URL."""
    port = free_port()
    argv = [sys.executable, "-m", module, "--host", host, "--port", str(port)]
    proc = Process(name, argv, dict(os.environ), log_dir).start()
    url = f"http://{host}:{port}"

    def healthy():
        try:
            return httpx.get(f"{url}/_fake/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(healthy, timeout=20, message=name)
    try:
        yield url
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def fake_llm(log_dir):
    """The fake Anthropic Messages API server; yields its base URL."""
    with fake_server("fake-llm", "tests.fakes.anthropic_server", log_dir) as url:
        yield url


@pytest.fixture(scope="session")
def fake_openai(log_dir):
    """The fake OpenAI-compatible Chat Completions server (tests/fakes/openai_server.py), the workers'
    OPENAI_BASE_URL; yields its base URL (without /v1). It listens on WEBHOOK_HOST, so an agent's own
    base_url may point at it too (the address policy admits that address only)."""
    with fake_server("fake-openai", "tests.fakes.openai_server", log_dir, host=WEBHOOK_HOST) as url:
        yield url


@pytest.fixture
def openai_requests(fake_openai):
    """Requests the fake OpenAI-compatible server received, newest last (after earlier runs settled, as
    for fake_requests)."""
    _earlier_runs_settle()

    def fetch(limit: int = 50) -> list[dict]:
        return httpx.get(f"{fake_openai}/_fake/requests", params={"limit": limit}).json()

    return fetch


@pytest.fixture(scope="session")
def fake_discord(log_dir):
    """The fake Discord (REST API and gateway, tests/fakes/discord_server.py); yields its base URL."""
    with fake_server("fake-discord", "tests.fakes.discord_server", log_dir) as url:
        yield url


@pytest.fixture(scope="session")
def service_env(fake_llm, fake_openai, fake_discord) -> dict:
    env = dict(os.environ)
    env.update(
        ANTHROPIC_BASE_URL=fake_llm, ANTHROPIC_API_KEY="test-key", PYTHONUNBUFFERED="1",
        OPENAI_BASE_URL=f"{fake_openai}/v1", OPENAI_API_KEY="test-openai-key",
        DISCORD_API_BASE_URL=f"{fake_discord}/api/v10", DISCORD_GATEWAY_URL=f"{fake_discord.replace('http', 'ws', 1)}/gateway/",
    )
    return env


# For the tests about crash recovery only, and only in the workers they start: a dead worker's lease lapses
# in 2 s and housekeeping notices within half a second, instead of 30 s and 5 s.
CRASH_RECOVERY_TIMINGS = {"BEAMCLAW_RUN_LEASE_SECONDS": "2", "BEAMCLAW_HOUSEKEEPING_SECONDS": "0.5"}


@dataclass
class Workers:
    env: dict
    log_dir: Path

    def spawn(self, name: str | None = None, concurrency: int = 50, env: dict | None = None) -> Process:
        name = name or f"worker-{uuid.uuid4().hex[:6]}"
        argv = [sys.executable, "manage.py", "worker", "-c", str(concurrency), "-n", f"{name}@%h", "-l", "INFO"]
        proc = Process(name, argv, {**self.env, **(env or {})}, self.log_dir).start()
        self.wait_ready(name)
        return proc

    def wait_ready(self, name: str) -> None:
        from beamclaw_project.infra.heartbeats import node_alive

        hostname = f"{name}@{socket.gethostname()}"
        wait_until(lambda: node_alive(hostname), timeout=30, message=f"worker {name}")


@pytest.fixture(scope="session")
def workers(service_env, log_dir, django_db_setup, redis_clean) -> Workers:
    return Workers(env=service_env, log_dir=log_dir)


@pytest.fixture(scope="session")
def worker(workers):
    """The shared worker. Tests that stop it must start it again (see crash_recovery)."""
    holder = {"proc": workers.spawn("shared")}
    yield holder
    holder["proc"].stop()


@pytest.fixture(scope="module")
def plugin_worker(request, worker, workers):
    """For tests of plug-ins: the only worker while the module runs loads the module's `PLUGINS`
    (BEAMCLAW_PLUGINS; a second worker without them would take some of the runs). Afterwards a shared
    worker is back."""
    worker["proc"].stop()
    proc = workers.spawn(f"plugins-{uuid.uuid4().hex[:4]}", env={"BEAMCLAW_PLUGINS": ",".join(request.module.PLUGINS)})
    yield proc
    proc.stop()
    worker["proc"] = workers.spawn(f"shared-{uuid.uuid4().hex[:4]}")


@pytest.fixture
def fleet(worker, workers):
    """For tests that run workers of their own: stops the shared worker, and `spawn(name, env=None)`
    starts workers (production timings unless `env` says otherwise). Afterwards those are stopped and a
    shared worker is back."""
    worker["proc"].stop()
    started: list[Process] = []

    def spawn(name: str, env: dict | None = None, **options) -> Process:
        started.append(workers.spawn(name, env=env, **options))
        return started[-1]

    yield spawn
    for proc in started:
        proc.stop()
    worker["proc"] = workers.spawn(f"shared-{uuid.uuid4().hex[:4]}")


@pytest.fixture
def crash_recovery(fleet):
    """For crash-recovery tests: `spawn(name)` starts workers with CRASH_RECOVERY_TIMINGS, in place of the
    shared worker (see fleet)."""
    def spawn(name: str, env: dict | None = None, **options) -> Process:
        return fleet(name, env={**CRASH_RECOVERY_TIMINGS, **(env or {})}, **options)

    return spawn


def start_daphne(name: str, env: dict, log_dir: Path) -> tuple[Process, str]:
    """A real Daphne serving the ASGI app on a free port, once it answers /health; (process, base URL)."""
    port = free_port()
    argv = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "beamclaw_project.asgi:application"]
    proc = Process(name, argv, env, log_dir).start()
    url = f"http://127.0.0.1:{port}"

    def up():
        try:
            return httpx.get(f"{url}/health", timeout=2).status_code in (200, 503)
        except httpx.HTTPError:
            return False

    wait_until(up, timeout=30, message=f"Daphne ({name})")
    return proc, url


def assert_whole_deltas(pieces: list[str], provider_deltas: list[str]) -> None:
    """The text pieces a client got (chunks, events) are the model's deltas in order, each piece one or more
    whole deltas. The worker joins deltas that come within 2 ms of each other (sessions/runs/delta_window.py),
    and a loaded machine may read several at once, so how many pieces there are is not fixed; a piece that
    splits a delta, or text lost or repeated, is wrong."""
    assert "".join(pieces) == "".join(provider_deltas)
    delta_ends = set(itertools.accumulate(len(d) for d in provider_deltas))
    assert set(itertools.accumulate(len(p) for p in pieces)) <= delta_ends, f"{pieces} splits {provider_deltas}"
    assert all(pieces), "an empty piece"


def queued_message_pop(queue: str, priority: int) -> dict:
    """The one message on the queue's list for that priority, taken off it."""
    with current_app.pool.acquire(block=True) as connection:
        channel = connection.default_channel
        key = channel._q_for_pri(queue, priority)
        # Not `channel.client`: once this process has consumed on a pooled connection (a test's
        # app.control broadcast waits for replies with a BRPOP), that client is pinned to the BRPOP's
        # connection, whose reply is still unread.
        with channel.conn_or_acquire() as client:
            raw = client.rpop(key)
            assert raw is not None and client.llen(key) == 0
    message = json.loads(raw)
    message["body"] = json.loads(base64.b64decode(message["body"]))
    return message


def redis_connection_drop(connection) -> None:
    """Redis drops this redis-py connection of this process (as on a client timeout, or a restart): found by
    its address, since other connections of the suite's database may have sent the same command last."""
    from beamclaw_project.infra.redis import redis_client

    host, port = connection._sock.getsockname()[:2]
    redis_client().client_kill(f"{host}:{port}")


def sse_events(lines):
    """Server-Sent Events from an iterator of lines, each as {"id", "event", "data"} (data parsed as JSON)."""
    current = {}
    for line in lines:
        if line.startswith("id: "):
            current["id"] = int(line[4:])
        elif line.startswith("event: "):
            current["event"] = line[7:]
        elif line.startswith("data: "):
            current["data"] = json.loads(line[6:])
        elif line == "" and current:
            yield current
            current = {}


@pytest.fixture(scope="session")
def gateway(service_env, log_dir, django_db_setup, redis_clean) -> str:
    """A real Daphne serving the ASGI app; yields its base URL."""
    proc, url = start_daphne("daphne", service_env, log_dir)
    yield url
    proc.stop()


@pytest.fixture
def live(gateway, worker) -> str:
    """A running gateway with a worker behind it; the base URL."""
    return gateway


@dataclass
class TenantBundle:
    tenant: object
    agent: object
    api_key: str

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.api_key}"}


def openai_client(live: str, bundle, *, timeout: float = 30):
    """The official `openai` client on the gateway's /v1, with a tenant's key and no retries (a test sees the
    first answer)."""
    import openai

    return openai.OpenAI(base_url=f"{live}/v1", api_key=bundle.api_key, max_retries=0, timeout=timeout)


@pytest.fixture
def make_tenant():
    from tenants.services import tenant_create

    def make(**agent_fields) -> TenantBundle:
        slug = f"t-{uuid.uuid4().hex[:10]}"
        tenant, agent, issued = tenant_create(slug=slug, agent_slug="assistant")
        if agent_fields:
            for field, value in agent_fields.items():
                setattr(agent, field, value)
            agent.save()
        return TenantBundle(tenant=tenant, agent=agent, api_key=issued.raw_key)

    return make


@pytest.fixture
def tenant(make_tenant) -> TenantBundle:
    return make_tenant()


@pytest.fixture
def admin_client():
    """A Django test client logged in as a superuser of its own. It replaces pytest-django's fixture, which
    runs the test in a transaction the worker and Daphne cannot see into and shares one "admin" user."""
    from django.contrib.auth import get_user_model
    from django.test import Client

    username = f"admin-{uuid.uuid4().hex[:6]}"
    get_user_model().objects.create_superuser(username=username, email="", password="pw")
    client = Client()
    client.login(username=username, password="pw")
    return client


def _earlier_runs_settle(timeout: float = 10) -> None:
    """Wait until no run is queued or running; after `timeout`, go on with a warning (a run may wait for a
    deferred tool call for hours)."""
    from sessions.models import Run

    deadline = time.monotonic() + timeout
    while busy := list(Run.objects.filter(status__in=(Run.Status.QUEUED, Run.Status.RUNNING))[:3]):
        if time.monotonic() > deadline:
            warnings.warn(f"runs of earlier tests still going: {busy}", stacklevel=2)
            return
        time.sleep(0.05)


@pytest.fixture
def fake_requests(fake_llm):
    """Requests the fake LLM received, newest last. Tests read "the last request" from it, so the runs an
    earlier test left going (a queued follow-up, a sub-agent's announcement) are let finish first: their
    model calls would otherwise land among this test's."""
    _earlier_runs_settle()

    def fetch(limit: int = 50) -> list[dict]:
        return httpx.get(f"{fake_llm}/_fake/requests", params={"limit": limit}).json()

    return fetch
