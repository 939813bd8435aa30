"""Reads on a tenant's agents."""

from django.db.models import QuerySet

from tenants.models import Agent, Tenant


def agents_of(*, tenant: Tenant) -> QuerySet[Agent]:
    return Agent.objects.filter(tenant=tenant).order_by("slug")


def agent_by_slug(*, tenant: Tenant, slug: str) -> Agent | None:
    """The tenant's agent `slug` (with its tenant loaded), or None. None rather than an error: each edge
    words the refusal its own way (404 `model_not_found` on /v1, 400 naming `agent` on REST sessions, ...)."""
    return Agent.objects.filter(tenant=tenant, slug=slug).select_related("tenant").first()
