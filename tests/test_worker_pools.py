"""Dedicated worker pools (`python manage.py worker --tenants a,b` / `--exclude-tenants c`, docs/scaling.md):
a pool runs only its tenants' work, a tenant created later reaches only the pools that admit it (by the
creation broadcast and by the housekeeping reconciliation alike), and a pool that names no existing tenant
is refused before it starts.

What a worker consumes is read from the worker itself (Celery's `active_queues`), so no test waits for
something not to happen."""

import socket
import subprocess
import sys
import uuid

import httpx
import pytest

from beamclaw_project.celery import app
from beamclaw_project.infra.queues import queue_depths, tenant_of_queue
from sessions.models import Run
from tenants.models import Tenant
from tenants.queues import TENANT_QUEUE_ADD
from tenants.services import tenant_create
from tests.conftest import wait_until
from tests.procs import ROOT, Process


@pytest.fixture
def pool(fleet, workers):
    """`spawn(name, *options)` starts `manage.py worker <options>` in place of the shared worker (see fleet)
    and returns its node name once it beats."""
    started: list[Process] = []

    def spawn(name: str, *options: str) -> str:
        argv = [sys.executable, "manage.py", "worker", "-c", "8", "-n", f"{name}@%h", "-l", "INFO", *options]
        started.append(Process(name, argv, workers.env, workers.log_dir).start())
        workers.wait_ready(name)
        node = f"{name}@{socket.gethostname()}"
        # Its heartbeat comes first; control messages broadcast before it listens for them never reach it.
        wait_until(lambda: app.control.ping(destination=[node], timeout=1), timeout=15, interval=0, message=f"{node} to listen")
        return node

    yield spawn
    for proc in started:
        proc.stop()


def queues(node: str) -> set[str]:
    """The system and tenant queues a worker consumes (not its own direct queue), as it says itself."""
    replies = app.control.inspect(destination=[node], timeout=5).active_queues() or {}
    assert node in replies, f"{node} did not answer"
    return {q["name"] for q in replies[node] if q["name"] == "system" or q["name"].startswith("tenant.")}


def send(live: str, bundle, content: str) -> str:
    session = httpx.post(f"{live}/api/sessions/", headers=bundle.headers, json={"agent": "assistant"}).json()
    response = httpx.post(f"{live}/api/sessions/{session['id']}/messages/", headers=bundle.headers, json={"content": content})
    assert response.status_code == 202, response.text
    return response.json()["run"]["id"]


def waiting(queue: str) -> int:
    """Messages in a tenant's queue that no worker has fetched."""
    return queue_depths(tenant_slugs=[tenant_of_queue(queue)])[queue]


def status(run_id: str) -> str:
    return Run.objects.get(pk=run_id).status


def test_a_pool_runs_its_tenants_work_and_leaves_the_others_to_the_rest_of_the_fleet(live, pool, make_tenant):
    big, small = make_tenant(), make_tenant()
    tag = uuid.uuid4().hex[:4]
    big_pool = pool(f"pool-big-{tag}", "--tenants", big.tenant.slug)
    assert queues(big_pool) == {"system", f"tenant.{big.tenant.slug}"}

    small_run = send(live, small, "hello from the small tenant")
    big_run = send(live, big, "hello from the big tenant")
    wait_until(lambda: status(big_run) == Run.Status.SUCCEEDED, timeout=30, message="the big tenant's run")
    # Sent before the big tenant's run, which has finished: its first step still waits in its queue.
    assert status(small_run) == Run.Status.RUNNING and waiting(f"tenant.{small.tenant.slug}") == 1

    rest = pool(f"pool-rest-{tag}", "--exclude-tenants", big.tenant.slug, "--no-system-queue")
    consumed = queues(rest)
    assert f"tenant.{small.tenant.slug}" in consumed
    assert f"tenant.{big.tenant.slug}" not in consumed and "system" not in consumed
    wait_until(lambda: status(small_run) == Run.Status.SUCCEEDED, timeout=30, message="the small tenant's run, on the rest")


def test_a_tenant_created_later_reaches_only_the_pools_that_admit_it(pool, make_tenant):
    dedicated = make_tenant()
    tag = uuid.uuid4().hex[:6]
    # Excluded before they exist: how a large tenant's own pool is set up before the tenant is created.
    announced, reconciled = f"t-big-{tag}", f"t-big2-{tag}"
    rest = pool(f"rest-{tag}", "--exclude-tenants", f"{announced},{reconciled}")
    only = pool(f"only-{tag}", "--tenants", dedicated.tenant.slug)

    # Created through the service: its broadcast reaches the running workers at once.
    tenant_create(slug=announced, agent_slug="assistant")
    newcomer = make_tenant()
    wait_until(lambda: f"tenant.{newcomer.tenant.slug}" in queues(rest), timeout=15, message="the rest to take the newcomer")
    assert f"tenant.{announced}" not in queues(rest)
    assert queues(only) == {"system", f"tenant.{dedicated.tenant.slug}"}
    # The command itself says why (a worker handles its control messages in order, so this answer also
    # comes after the creation broadcasts above).
    reply = app.control.broadcast(TENANT_QUEUE_ADD, arguments={"slug": announced}, destination=[only], reply=True, timeout=5)
    assert reply == [{only: {"ok": f"tenant {announced} is not in this worker's pool"}}]

    # Created without a broadcast (as by a worker that was down meanwhile would see it): only the
    # housekeeping reconciliation finds them, and it keeps to the pool too. The excluded one is older, so
    # the tick that adds the newer one has seen it.
    Tenant.objects.create(slug=reconciled, name=reconciled)
    quiet = Tenant.objects.create(slug=f"t-quiet-{tag}", name="quiet")
    wait_until(lambda: f"tenant.{quiet.slug}" in queues(rest), timeout=30, message="housekeeping to add the quiet tenant")
    assert f"tenant.{reconciled}" not in queues(rest)
    assert queues(only) == {"system", f"tenant.{dedicated.tenant.slug}"}


def _worker_command(env: dict, *options: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", "worker", *options], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def test_a_pool_of_unknown_tenants_is_refused_with_what_to_do(workers, tenant):
    unknown = _worker_command(workers.env, "--tenants", f"{tenant.tenant.slug},no-such-tenant")
    assert unknown.returncode != 0
    assert "No tenant no-such-tenant" in unknown.stderr and "create_tenant" in unknown.stderr

    both = _worker_command(workers.env, "--tenants", tenant.tenant.slug, "--exclude-tenants", "other")
    assert both.returncode != 0 and "not allowed with argument" in both.stderr

    empty = _worker_command(workers.env, "--tenants", " , ")
    assert empty.returncode != 0 and "--tenants needs at least one tenant slug" in empty.stderr

    tenant.tenant.status = Tenant.Status.SUSPENDED
    tenant.tenant.save(update_fields=["status"])
    idle = _worker_command(workers.env, "--tenants", tenant.tenant.slug, "--no-system-queue")
    assert idle.returncode != 0 and "Nothing to consume" in idle.stderr
