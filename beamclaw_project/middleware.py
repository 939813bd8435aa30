"""Bearer-token endpoints skip the browser middleware.

Under ASGI each of Django's stock middlewares runs its hooks through a thread hop on the one shared
"thread-sensitive" executor thread, so every request of every client queues there, seven times. The
OpenAI-compatible API, /health and the run event stream are async views authenticated by API key: they
need no sessions, CSRF, messages or clickjacking headers, and are called directly.
"""

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.urls import Resolver404, resolve

FAST_PATH_PREFIXES = ("/v1/", "/health", "/api/runs/")


class ApiFastPathMiddleware:
    sync_capable = False
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        markcoroutinefunction(self)

    async def __call__(self, request):
        if request.path_info.startswith(FAST_PATH_PREFIXES):
            try:
                match = resolve(request.path_info)
            except Resolver404:
                match = None
            # Only the async views: DRF's sync views keep the full stack (and its thread handling).
            if match is not None and iscoroutinefunction(match.func):
                return await match.func(request, *match.args, **match.kwargs)
        return await self.get_response(request)
