"""API key authentication shared by every edge (OpenAI views, REST, WebSocket).

Every edge asks the same two questions here: which tenant is this key (`authenticate_key`), and may it do
this (`Principal.allows` / `Principal.require`, with the scope tables in `tenants.scopes`).
"""

from dataclasses import dataclass
from functools import cache

from django.utils import timezone

from beamclaw_project.errors import LimitExceeded
from beamclaw_project.infra.rows import Columns, instances, select_one
from tenants.limits import RequestCounted
from tenants.models import Agent, ApiKey, Tenant
from tenants.scopes import missing_scope_message, websocket_scope


class AuthError(Exception):
    def __init__(self, message: str, status: int = 401, code: str = "invalid_api_key", retry_after: int | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.retry_after = retry_after


class MissingScope(AuthError):
    """403: the key is valid but its scopes do not cover the request."""

    def __init__(self, scope: str, what: str):
        super().__init__(missing_scope_message(scope, what), status=403, code="insufficient_scope")
        self.scope = scope


@dataclass(frozen=True)
class Principal:
    tenant: Tenant
    api_key: ApiKey

    def allows(self, scope: str | None) -> bool:
        return scope is None or self.api_key.allows(scope)

    def require(self, scope: str | None, what: str) -> None:
        """Raise MissingScope unless the key has `scope`; `what` names the request in the message."""
        if not self.allows(scope):
            raise MissingScope(scope, what)

    def require_websocket_method(self, method: str) -> None:
        self.require(websocket_scope(method), f"the WebSocket method '{method}'")


def bearer_token(authorization_header: str | None) -> str | None:
    if not authorization_header:
        return None
    scheme, _, token = authorization_header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def authenticate_key(raw_key: str | None, *, scope: str | None = None, what: str = "this request") -> Principal:
    """The key's principal, or AuthError. With `scope`, a key without that scope is refused (403, naming
    the scope and `what` needs it)."""
    key, _, counted = _key_lookup(raw_key)
    return _authenticated(key, counted, scope=scope, what=what)


def authenticate_key_for_agent(raw_key: str | None, agent_slug: str, *, scope: str | None = None,
                               what: str = "this request") -> tuple[Principal, Agent | None]:
    """authenticate_key, and the key's tenant's agent `agent_slug` (None if it has none) from the same query:
    the OpenAI-compatible edge names an agent in every request."""
    key, agent, counted = _key_lookup(raw_key, agent_slug=agent_slug)
    return _authenticated(key, counted, scope=scope, what=what), agent


@cache
def _lookup_sql() -> tuple[Columns, Columns, Columns, str, str]:
    """Every request sends this query, so it is written out (beamclaw_project/infra/rows.py). key_hash is
    unique: at most one row."""
    key, tenant, agent = Columns(ApiKey, "k"), Columns(Tenant, "t"), Columns(Agent, "a")
    key_and_tenant = (
        f'FROM "{ApiKey._meta.db_table}" k JOIN "{Tenant._meta.db_table}" t '
        f'ON t.id = k."{ApiKey._meta.get_field("tenant").column}"'
    )
    plain = f"SELECT {key.sql}, {tenant.sql} {key_and_tenant} WHERE k.key_hash = %s"
    with_agent = (
        f'SELECT {key.sql}, {tenant.sql}, {agent.sql} {key_and_tenant} LEFT JOIN "{Agent._meta.db_table}" a '
        f'ON a."{Agent._meta.get_field("tenant").column}" = t.id AND a.slug = %s WHERE k.key_hash = %s'
    )
    return key, tenant, agent, plain, with_agent


def _key_lookup(raw_key: str | None, *,
                agent_slug: str | None = None) -> tuple[ApiKey | None, Agent | None, RequestCounted | None]:
    """The key (its tenant loaded), when `agent_slug` is given that agent of its tenant if it has one, and the
    request counted against the key's rate limit (in Redis, while Postgres looks the key up)."""
    if not raw_key:
        raise AuthError("Missing API key: send it as 'Authorization: Bearer bc_...'.")
    key_columns, tenant_columns, agent_columns, plain, with_agent = _lookup_sql()
    key_hash = ApiKey.hash_key(raw_key)
    with RequestCounted(key_hash) as counted:
        row = select_one(plain, [key_hash]) if agent_slug is None else select_one(with_agent, [agent_slug, key_hash])
        if row is None:
            counted.forget()
            return None, None, None
        counted.count()  # (read now: the connection it came on is the thread's again)
    if agent_slug is None:
        key, tenant = instances(row, key_columns, tenant_columns)
        agent = None
    else:
        key, tenant, agent = instances(row, key_columns, tenant_columns, agent_columns)  # (None: no such agent)
    key.tenant = tenant
    if agent is not None:
        agent.tenant = tenant
    return key, agent, counted


def _authenticated(key: ApiKey | None, counted: RequestCounted | None, *, scope: str | None, what: str) -> Principal:
    if key is None:
        raise AuthError("Invalid API key.")
    if key.revoked_at is not None:
        raise AuthError("This API key has been revoked.", code="revoked_api_key")
    if key.tenant.status != Tenant.Status.ACTIVE:
        raise AuthError("This tenant is suspended.", status=403, code="tenant_suspended")
    principal = Principal(tenant=key.tenant, api_key=key)
    principal.require(scope, what)
    try:
        counted.check(api_key=key)
    except LimitExceeded as exc:
        raise AuthError(exc.message, status=429, code=exc.code, retry_after=exc.retry_after)
    # Touch last_used_at at most once a minute: a write per request would cost more than the auth itself.
    now = timezone.now()
    if key.last_used_at is None or (now - key.last_used_at).total_seconds() > 60:
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
    return principal
