"""The fleet page: live workers, queue depths, and each tenant's runs in progress and pending approvals.

It refreshes itself: the panel asks for itself again every few seconds (htmx), and the view answers such
a request with the panel alone, swapped in place, so the page does not flicker or lose its scroll.
"""

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from beamclaw_project.dashboard import selectors
from beamclaw_project.dashboard.access import staff_required, tenant_filter
from sessions.usage import fleet_status_get

REFRESH_SECONDS = 5


@staff_required
def fleet(request: HttpRequest) -> HttpResponse:
    tenant = tenant_filter(request)
    everyone = selectors.tenants_all()
    context = {
        "status": fleet_status_get(tenants=[tenant] if tenant else everyone), "tenants": everyone, "tenant": tenant,
        "refresh_seconds": REFRESH_SECONDS,
    }
    template = "dashboard/fleet_panel.html" if request.headers.get("HX-Request") else "dashboard/fleet.html"
    return render(request, template, context)
