"""Reads on a tenant's agents."""

from django.db.models import QuerySet

from tenants.models import Agent, Tenant


def agents_of(*, tenant: Tenant) -> QuerySet[Agent]:
    return Agent.objects.filter(tenant=tenant).order_by("slug")


def agent_by_slug(*, tenant: Tenant, slug: str) -> Agent | None:
    """The tenant's agent `slug` (with its tenant loaded), or None. None rather than an error: each edge
    words the refusal its own way (404 `model_not_found` on /v1, 400 naming `agent` on REST sessions, ...)."""
    # (tenant, slug) is unique: no ORDER BY, and the tenant the caller has rather than a join.
    agent = Agent.objects.filter(tenant=tenant, slug=slug).order_by()[:1]
    if not agent:
        return None
    agent[0].tenant = tenant
    return agent[0]
