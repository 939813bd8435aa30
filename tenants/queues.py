"""Which tenant queues exist (queue names: beamclaw_project/infra/queues.py).

Workers learn about new tenants twice over: a broadcast when the tenant is created, and a periodic
reconciliation against Postgres (for workers that were down during the broadcast).
"""

from celery import current_app

from beamclaw_project.infra.queues import tenant_queue
from tenants.models import Tenant


def active_tenant_queues() -> list[str]:
    slugs = Tenant.objects.filter(status=Tenant.Status.ACTIVE).values_list("slug", flat=True)
    return [tenant_queue(slug) for slug in slugs]


def announce_queue(slug: str) -> None:
    """Ask running workers to start consuming a new tenant's queue right away."""
    current_app.control.add_consumer(tenant_queue(slug), reply=False)
