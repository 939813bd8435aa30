"""GET /metrics (filled in by the metrics work)."""

from django.http import Http404


def metrics(request):
    raise Http404
