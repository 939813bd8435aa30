"""GET /metrics: the gateway's metrics in Prometheus' text format (docs/metrics.md).

- What every process recorded (beamclaw_project/infra/metrics.py), added up from the files in
  PROMETHEUS_MULTIPROC_DIR, so the web's scrape includes the workers' counts. Only BeamClaw's own series:
  Flower loads the project and may write its metrics beside ours, but it serves them itself.
- Two gauges read at scrape time, because they describe the present rather than count events: each tenant
  queue's depth (one pipelined round trip to the broker) and each tenant's pending approvals (one query).
  A store that does not answer leaves its gauge out of that scrape, with a warning in the log, rather than
  failing the scrape: the counters are what an outage is looked into with.
- Access: with BEAMCLAW_METRICS_TOKEN set, `Authorization: Bearer <token>` is required (401 otherwise).
  Unset, only clients on this machine that connect directly may scrape (403 otherwise, saying to set the
  token): behind a reverse proxy on the same host every client would look local, so a request that carries
  a forwarding header is not taken for a local one.
"""

import hmac
import ipaddress
import logging

from django.conf import settings
from django.db.models import Count
from django.http import HttpResponse, JsonResponse
from django.views.decorators.http import require_http_methods
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector

from beamclaw_project.infra.metrics import PREFIX
from beamclaw_project.infra.queues import queue_depths
from tenants.models import Tenant
from tools.models import Approval

logger = logging.getLogger(__name__)

_FORWARDING_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Real-IP")


class _RecordedMetrics:
    """The counters and histograms every process of this host recorded, added up."""

    def collect(self):
        for metric in MultiProcessCollector(None).collect():
            if metric.name.startswith(PREFIX):
                yield metric


class _PresentGauges:
    """Queue depths and pending approvals, as they are at the time of the scrape."""

    def collect(self):
        try:
            active = list(Tenant.objects.filter(status=Tenant.Status.ACTIVE).values_list("slug", flat=True))
            pending = dict(
                Approval.objects.filter(status=Approval.Status.PENDING)
                .values("tenant__slug").annotate(count=Count("pk")).values_list("tenant__slug", "count")
            )
        except Exception as exc:  # noqa: BLE001 - the recorded metrics are served without these
            logger.warning("metrics: tenants and approvals not read (%s: %s)", type(exc).__name__, exc)
            return
        approvals = GaugeMetricFamily(f"{PREFIX}approvals_pending", "Tool calls waiting for a human's decision.",
                                      labels=["tenant"])
        for slug in sorted({*active, *pending}):
            approvals.add_metric([slug], pending.get(slug, 0))
        yield approvals
        try:
            depths = queue_depths(tenant_slugs=active)
        except Exception as exc:  # noqa: BLE001 - as above, for the broker
            logger.warning("metrics: queue depths not read (%s: %s)", type(exc).__name__, exc)
            return
        queues = GaugeMetricFamily(f"{PREFIX}queue_depth",
                                   "Messages waiting for a worker in the system queue and each active tenant's queue.",
                                   labels=["queue"])
        for name, depth in sorted(depths.items()):
            queues.add_metric([name], depth)
        yield queues


def _refusal(request) -> JsonResponse | None:
    token = settings.BEAMCLAW_METRICS["TOKEN"]
    if token:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode()):
            return None
        problem = "The metrics token is wrong" if scheme else "GET /metrics needs the metrics token"
        detail = f"{problem}: send `Authorization: Bearer <token>` with the value of BEAMCLAW_METRICS_TOKEN."
        response = JsonResponse({"detail": detail, "code": "not_authenticated"}, status=401)
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    if _direct_local_client(request):
        return None
    return JsonResponse({
        "detail": "Without BEAMCLAW_METRICS_TOKEN, GET /metrics answers only clients on the gateway's own machine that "
                  "connect directly (not through a proxy). Set BEAMCLAW_METRICS_TOKEN on the gateway and scrape with "
                  "`Authorization: Bearer <token>`.",
        "code": "permission_denied",
    }, status=403)


def _direct_local_client(request) -> bool:
    if any(header in request.headers for header in _FORWARDING_HEADERS):
        return False
    try:
        return ipaddress.ip_address(request.META.get("REMOTE_ADDR") or "").is_loopback
    except ValueError:
        return False


@require_http_methods(["GET", "HEAD"])
def metrics(request):
    refusal = _refusal(request)
    if refusal is not None:
        return refusal
    registry = CollectorRegistry()
    registry.register(_RecordedMetrics())
    registry.register(_PresentGauges())
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    return HttpResponse(encoder(registry), content_type=content_type)
