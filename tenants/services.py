from dataclasses import dataclass

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from tenants.models import Agent, ApiKey, Tenant
from tenants.queues import announce_queue


@dataclass(frozen=True)
class IssuedKey:
    api_key: ApiKey
    raw_key: str


def api_key_create(*, tenant: Tenant, name: str = "") -> IssuedKey:
    prefix, raw = ApiKey.generate()
    key = ApiKey.objects.create(tenant=tenant, name=name, prefix=prefix, key_hash=ApiKey.hash_key(raw))
    return IssuedKey(api_key=key, raw_key=raw)


def api_key_revoke(*, api_key: ApiKey) -> ApiKey:
    if api_key.revoked_at is None:
        api_key.revoked_at = timezone.now()
        api_key.save(update_fields=["revoked_at"])
    return api_key


def agent_create(*, tenant: Tenant, slug: str, model: str | None = None, **fields) -> Agent:
    agent = Agent(tenant=tenant, slug=slug, model=model or settings.BEAMCLAW["DEFAULT_MODEL"], **fields)
    agent.full_clean(validate_unique=False)
    agent.save()
    return agent


@transaction.atomic
def tenant_create(*, slug: str, name: str = "", agent_slug: str = "default", model: str | None = None) -> tuple[Tenant, Agent, IssuedKey]:
    tenant = Tenant(slug=slug, name=name or slug)
    tenant.full_clean()
    tenant.save()
    agent = agent_create(tenant=tenant, slug=agent_slug, model=model)
    issued = api_key_create(tenant=tenant, name="initial")
    transaction.on_commit(lambda: announce_queue(tenant.slug))
    return tenant, agent, issued
