"""Per-tenant Celery queues.

Each tenant's work goes to its own queue, `tenant.<slug>`, so one tenant's backlog never sits in front of
another's: the Redis transport takes turns between the queues a worker consumes. Workers learn about new
tenants twice over: a broadcast when the tenant is created, and a periodic reconciliation against Postgres
(for workers that were down during the broadcast).
"""

from beamclaw_project.celery import app

SYSTEM_QUEUE = "system"


def tenant_queue(slug: str) -> str:
    return f"tenant.{slug}"


def active_tenant_queues() -> list[str]:
    from tenants.models import Tenant

    slugs = Tenant.objects.filter(status=Tenant.Status.ACTIVE).values_list("slug", flat=True)
    return [tenant_queue(slug) for slug in slugs]


def announce_queue(slug: str) -> None:
    """Ask running workers to start consuming a new tenant's queue right away."""
    app.control.add_consumer(tenant_queue(slug), reply=False)
