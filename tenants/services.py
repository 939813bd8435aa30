from dataclasses import dataclass

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone
from rest_framework.exceptions import ValidationError as ApiValidationError

from sessions.providers import provider_names
from tenants.models import Agent, ApiKey, Tenant
from tenants.queues import announce_queue

# The checks of an agent's structured fields, shared by the agent API (tenants/serializers.py) and
# beamclaw.yaml (tenants/config_file.py); they raise the API's ValidationError.
APPROVAL_MODES = ("off", "on_miss", "always")


def tool_policy_clean(value) -> dict:
    """`Agent.tool_policy`: {"allow": [...], "deny": [...]}, tool names or patterns."""
    if not isinstance(value, dict) or set(value) - {"allow", "deny"}:
        raise ApiValidationError('Must be an object with optional "allow" and "deny" lists.')
    return {key: _string_list(value.get(key, []), f"tool_policy.{key}") for key in ("allow", "deny")}


def approval_clean(value) -> dict:
    """`Agent.approval`: {"mode": off|on_miss|always, "allowlist": [...], "timeout_seconds"?: 1-86400}."""
    if not isinstance(value, dict) or set(value) - {"mode", "allowlist", "timeout_seconds"}:
        raise ApiValidationError('Must be an object with "mode" and optional "allowlist".')
    mode = value.get("mode", "off")
    if mode not in APPROVAL_MODES:
        raise ApiValidationError(f"mode must be one of {', '.join(APPROVAL_MODES)}.")
    cleaned = {"mode": mode, "allowlist": _string_list(value.get("allowlist", []), "approval.allowlist")}
    if "timeout_seconds" in value:
        timeout = value["timeout_seconds"]
        if isinstance(timeout, bool) or not isinstance(timeout, int) or not 1 <= timeout <= 86400:
            raise ApiValidationError("timeout_seconds must be an integer between 1 and 86400.")
        cleaned["timeout_seconds"] = timeout
    return cleaned


def sandbox_clean(value) -> dict:
    """`Agent.sandbox`: {"network": bool}."""
    if not isinstance(value, dict) or set(value) - {"network"} or not isinstance(value.get("network", False), bool):
        raise ApiValidationError('Must be an object like {"network": false}.')
    return {"network": value.get("network", False)}


def _string_list(value, name: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise ApiValidationError(f"{name} must be a list of non-empty strings.")
    return value



@dataclass(frozen=True)
class IssuedKey:
    api_key: ApiKey
    raw_key: str


class KeyEscalation(Exception):
    """A key asked to make a key with more rights than its own; `field` is the request field at fault."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


def _within(limit: int, ceiling: int) -> bool:
    # 0 is "unlimited", the largest limit there is.
    if ceiling == 0:
        return True
    return limit != 0 and limit <= ceiling


def api_key_create(
    *,
    tenant: Tenant,
    name: str = "",
    scopes: list[str] | None = None,
    rate_limit_per_minute: int | None = None,
    created_by: ApiKey | None = None,
) -> IssuedKey:
    """Issue a key. `created_by` is the key asking (API); without it the operator is asking (admin, CLI).

    A key never gets more than its creator: scopes a subset of the creator's, a request rate no higher than
    the creator's effective one. Left out, both are the creator's own. The operator's keys default to every
    scope and the deployment's rate.
    """
    if created_by is not None:
        if scopes is None:
            scopes = list(created_by.scopes)
        extra = [scope for scope in scopes if scope not in created_by.scopes]
        if extra:
            raise KeyEscalation(
                "scopes",
                f"The key making this request lacks {', '.join(repr(s) for s in extra)}; "
                f"a new key can only have scopes its creator has ({', '.join(created_by.scopes)}).",
            )
        ceiling = created_by.effective_rate_limit
        if rate_limit_per_minute is None:
            rate_limit_per_minute = created_by.rate_limit_per_minute
        elif not _within(rate_limit_per_minute, ceiling):
            asked = "no limit (0)" if rate_limit_per_minute == 0 else str(rate_limit_per_minute)
            raise KeyEscalation(
                "rate_limit_per_minute",
                f"Asked for {asked}, but the key making this request is limited to {ceiling} requests per minute; "
                "a key can only lower its limit. Only the operator can raise it.",
            )
    prefix, raw = ApiKey.generate()
    key = ApiKey(
        tenant=tenant, name=name, prefix=prefix, key_hash=ApiKey.hash_key(raw),
        rate_limit_per_minute=rate_limit_per_minute, created_by=created_by,
    )
    if scopes is not None:
        key.scopes = list(dict.fromkeys(scopes))
    key.save()
    return IssuedKey(api_key=key, raw_key=raw)


def api_key_revoke(*, api_key: ApiKey) -> ApiKey:
    if api_key.revoked_at is None:
        api_key.revoked_at = timezone.now()
        api_key.save(update_fields=["revoked_at"])
    return api_key


def agent_create(*, tenant: Tenant, slug: str, model: str | None = None, **fields) -> Agent:
    agent = Agent(tenant=tenant, slug=slug, model=model or settings.BEAMCLAW["DEFAULT_MODEL"], **fields)
    agent.full_clean(validate_unique=False)
    if agent.provider not in provider_names():
        raise ValidationError({"provider": f"Unknown provider '{agent.provider}'. Supported: {', '.join(provider_names())}."})
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
