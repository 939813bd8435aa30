"""API key authentication and scope checks for the REST API (DRF)."""

from dataclasses import dataclass

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication
from rest_framework.permissions import BasePermission

from beamclaw_project.api_errors import MissingScopeError
from tenants.auth import AuthError, Principal, authenticate_key, bearer_token
from tenants.scopes import missing_scope_message, rest_scope


@dataclass(frozen=True)
class TenantUser:
    """What `request.user` is on the REST API: the tenant an API key belongs to."""

    principal: Principal
    is_authenticated: bool = True
    is_anonymous: bool = False
    is_staff: bool = False

    @property
    def tenant(self):
        return self.principal.tenant

    @property
    def api_key(self):
        return self.principal.api_key


class ApiKeyAuthentication(BaseAuthentication):
    def authenticate(self, request):
        header = request.headers.get("Authorization")
        if not header:
            return None
        try:
            principal = authenticate_key(bearer_token(header))
        except AuthError as exc:
            if exc.status == 403:
                raise exceptions.PermissionDenied(exc.message, code=exc.code)
            if exc.status == 429:
                raise exceptions.Throttled(wait=exc.retry_after, detail=exc.message, code=exc.code)
            raise exceptions.AuthenticationFailed(exc.message, code=exc.code)
        return TenantUser(principal=principal), principal.api_key

    def authenticate_header(self, request):
        # Makes DRF answer 401 (not 403) to a request without credentials.
        return 'Bearer realm="api"'


class HasKeyScope(BasePermission):
    """The default permission of every REST view: an authenticated key whose scopes cover the request.

    The scope comes from the request (method and URL name, `tenants.scopes.rest_scope`), so views declare
    nothing and a new write endpoint needs `admin` until it is listed as a chat action.
    """

    def has_permission(self, request, view):
        user = request.user
        if not (user and user.is_authenticated):
            return False  # DRF answers 401 when no credentials were sent
        match = request.resolver_match
        scope = rest_scope(method=request.method, url_name=match.url_name if match else None)
        if not user.principal.allows(scope):
            raise MissingScopeError(missing_scope_message(scope, f"{request.method} {request.path}"), scope=scope)
        return True


class TenantScopedMixin:
    """Views whose objects belong to the caller's tenant: another tenant's object is a 404."""

    tenant_field = "tenant"

    @property
    def tenant(self):
        return self.request.user.tenant

    def get_queryset(self):
        return super().get_queryset().filter(**{self.tenant_field: self.tenant})


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    """Tells drf-spectacular that the REST API takes `Authorization: Bearer <api key>`."""

    target_class = "tenants.api_auth.ApiKeyAuthentication"
    name = "ApiKey"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "An API key, bc_<prefix>_<secret>."}
