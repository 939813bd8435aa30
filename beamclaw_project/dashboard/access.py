"""Who may use the dashboard: Django users with `is_staff`, who see every tenant.

There is no link between Django users and tenants yet, so the dashboard is an operator's tool, not a
tenant's: anonymous visitors are sent to the login page, signed-in users without `is_staff` get a 403,
and the login form itself refuses non-staff accounts (the admin's own rule, reused). The WebSocket applies
the same test to the session cookie (consumers.py).
"""

from functools import wraps

from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.views import redirect_to_login
from django.shortcuts import render

from beamclaw_project.dashboard import selectors
from tenants.models import Tenant


class StaffLoginForm(AdminAuthenticationForm):
    """Django's admin login form: a wrong password and a non-staff account get the same clear refusal."""


def is_operator(user) -> bool:
    return bool(user and user.is_authenticated and user.is_active and user.is_staff)


class UnknownTenant(Exception):
    def __init__(self, slug: str):
        super().__init__(slug)
        self.slug = slug


def tenant_filter(request) -> Tenant | None:
    """The `tenant` query parameter of every list page as a Tenant (None: every tenant). An unknown slug
    raises UnknownTenant, which `staff_required` answers with a 404 page naming the tenants there are."""
    slug = request.GET.get("tenant", "").strip()
    if not slug:
        return None
    tenant = selectors.tenant_by_slug(slug=slug)
    if tenant is None:
        raise UnknownTenant(slug)
    return tenant


def staff_required(view):
    """Anonymous: to the login page and back. Signed in without staff rights: a 403 that says so."""

    @wraps(view)
    def wrapper(request, *args, **kwargs):
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        if not is_operator(request.user):
            return render(request, "dashboard/forbidden.html", status=403)
        try:
            return view(request, *args, **kwargs)
        except UnknownTenant as unknown:
            context = {"slug": unknown.slug, "tenants": selectors.tenants_all()}
            return render(request, "dashboard/unknown_tenant.html", context, status=404)

    return wrapper
