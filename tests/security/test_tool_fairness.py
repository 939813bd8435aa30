"""One tenant cannot hold every worker thread with slow tool invocations (each runs on a worker thread
until it ends), and a tenant's slow invocations do not hold the gateway's shared database connections."""

import threading

import httpx
from django.conf import settings

from beamclaw_project.infra.redis import redis_client
from tests.conftest import wait_until
from tests.tools.conftest import invoke, requires_bwrap
from tools import runner
from tools.models import ToolInvocation


def test_invocations_in_flight_are_capped_per_tenant(live, make_tenant):
    greedy, other = make_tenant(), make_tenant()
    cap = settings.BEAMCLAW_TOOLS["MAX_INVOCATIONS_IN_FLIGHT_PER_TENANT"]
    # As if `cap` slow commands of this tenant were running on the workers right now: rows and the leases a
    # worker holds while it runs them (without the leases, the workers' recovery settles them as lost). The
    # leases come first: a recovery sweep between the rows and their leases settled the rows as lost.
    running = [
        ToolInvocation(tenant=greedy.tenant, agent=greedy.agent, tool="exec", input={"command": "sleep 600"},
                       status=ToolInvocation.Status.RUNNING)
        for _ in range(cap)
    ]
    for invocation in running:
        redis_client().set(runner.lease_key(runner.KIND_API_INVOCATION, invocation.pk), "a-worker-token", ex=300)
    ToolInvocation.objects.bulk_create(running)
    refused = invoke(live, greedy, "process", {"action": "list"})
    assert refused.status_code == 429 and refused.json()["code"] == "tool_invocations_in_flight"
    assert f"limit {cap}" in refused.json()["detail"] and refused.headers["Retry-After"]
    assert invoke(live, other, "process", {"action": "list"}).json()["ok"], "another tenant is not affected"
    ToolInvocation.objects.filter(tenant=greedy.tenant, status="running").update(status="succeeded")
    assert invoke(live, greedy, "process", {"action": "list"}).json()["ok"], "room again once they finish"


@requires_bwrap
def test_waiting_invocations_do_not_hold_database_connections(live, make_tenant):
    """Each waiting POST /api/tools/invoke used to keep its database connection until its answer: a few
    dozen slow calls drained the gateway's pool and every tenant's requests failed after 30 s."""
    slow, other = make_tenant(), make_tenant()
    waiting = settings.BEAMCLAW_TOOLS["MAX_INVOCATIONS_IN_FLIGHT_PER_TENANT"]
    assert waiting > settings.DATABASES["default"]["OPTIONS"]["pool"]["max_size"], "enough to drain the pool"
    results = []
    threads = [threading.Thread(target=lambda: results.append(
        invoke(live, slow, "exec", {"command": "sleep 20; echo done", "yield_ms": 60000}))) for _ in range(waiting)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: ToolInvocation.objects.filter(tenant=slow.tenant, status="running").count() == waiting,
                   timeout=60, message="every slow invocation to be running while its request waits")
        response = httpx.get(f"{live}/api/agents/", headers=other.headers, timeout=60)
        assert response.status_code == 200, response.text
    finally:
        for thread in threads:
            thread.join()
    assert [r.status_code for r in results] == [200] * waiting
    assert all(r.json()["output"] == "done\n" for r in results)
