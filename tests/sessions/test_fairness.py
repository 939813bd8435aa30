"""A tenant flooding its queue does not hold up another tenant's run (per-tenant queues, round robin)."""

from sessions.models import AgentSession, Run
from sessions.runs import run_submit
from tenants.models import Tenant
from tests.conftest import wait_until

FLOOD = 150  # three times the shared worker's 50 threads


def submit(bundle, name, text) -> Run:
    session = AgentSession.objects.create(tenant=bundle.tenant, agent=bundle.agent, key=f"agent:assistant:{name}")
    return run_submit(session=session, content=[{"type": "text", "text": text}], trigger=Run.Trigger.API)


def test_noisy_neighbour_does_not_delay_another_tenant(live, make_tenant, worker, workers):
    noisy, quiet = make_tenant(), make_tenant()
    Tenant.objects.filter(pk=noisy.tenant.pk).update(max_concurrent_runs=1000)
    step = "[[deltas=10]] [[delay_ms=50]]"  # each step takes about half a second
    # With no worker running, the whole flood is queued first and the quiet tenant's run last: a single
    # first-come-first-served queue would answer it after all 150.
    worker["proc"].stop()
    try:
        flood = [submit(noisy, f"flood-{i}", f"flood {i} {step}") for i in range(FLOOD)]
        mine = submit(quiet, "mine", f"quiet {step}")
    finally:
        worker["proc"] = workers.spawn("shared-after-fairness")

    wait_until(lambda: Run.objects.get(pk=mine.pk).status == "succeeded", timeout=60, message="the quiet tenant's run")
    finished_at = Run.objects.get(pk=mine.pk).finished_at
    ahead = Run.objects.filter(pk__in=[r.pk for r in flood], finished_at__lt=finished_at).count()
    # Round robin between tenant queues puts it in the worker's first batch of 50: it finishes with the
    # first wave instead of after the third.
    assert ahead < 50, f"{ahead} of the flood's runs finished before the quiet tenant's run"
    wait_until(
        lambda: Run.objects.filter(pk__in=[r.pk for r in flood], status="succeeded").count() == FLOOD,
        timeout=90, message="the flood to drain",
    )
