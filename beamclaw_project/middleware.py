"""Bearer-token endpoints skip the browser middleware.

Under ASGI each of Django's stock middlewares runs its hooks through a thread hop on the one shared
"thread-sensitive" executor thread, so every request of every client queues there, seven times. The
OpenAI-compatible API, /health and the run event stream are async views authenticated by API key: they
need no sessions, CSRF, messages or clickjacking headers, and are called directly.
"""

import logging

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import JsonResponse
from django.urls import Resolver404, resolve

from beamclaw_project import json_input
from beamclaw_project.infra.outages import RETRY_AFTER_SECONDS, outage_of

logger = logging.getLogger(__name__)

FAST_PATH_PREFIXES = ("/v1/", "/health", "/api/runs/")
# Where every request body is read as JSON by some view, whatever its Content-Type says.
BODY_CHECKED_PREFIXES = ("/v1/", "/api/")


class _AsyncMiddleware:
    """A middleware that runs on the event loop only, so a request passes it without a thread hop."""

    sync_capable = False
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        markcoroutinefunction(self)


def api_view_of(path: str):
    """The async view serving `path` if it is on the fast path, else None. Only the async views: DRF's sync
    views keep the full stack (and its thread handling)."""
    if not path.startswith(FAST_PATH_PREFIXES):
        return None
    try:
        match = resolve(path)
    except Resolver404:
        return None
    return match if iscoroutinefunction(match.func) else None


async def api_view_call(request):
    """Call a fast-path view (the caller has put api_view_of's match in request.resolver_match). The stack
    below it (OutageMiddleware's hook included) is skipped, so an outage is answered here."""
    match = request.resolver_match
    try:
        return await match.func(request, *match.args, **match.kwargs)
    except Exception as exc:
        if (store := outage_of(exc)) is None:
            raise
        return outage_response(request, store, exc)


class ApiFastPathMiddleware(_AsyncMiddleware):
    """The fast-path views, when a request comes through Django's own handler (the gateway's ASGI handler,
    gateway_handler.py, sends them past the whole middleware chain)."""

    async def __call__(self, request):
        if (match := api_view_of(request.path_info)) is not None:
            request.resolver_match = match
            return await api_view_call(request)
        return await self.get_response(request)


def outage_response(request, store: str, exc: BaseException) -> JsonResponse:
    """503 with Retry-After, in the shape of the edge the request came to: OpenAI's error object under
    /v1/, the REST `detail`/`code` object under /api/ (and elsewhere). The failure itself is logged: the
    client is told only which store, the operator needs what went wrong with it."""
    logger.warning("%s %s answered 503: %s is unavailable (%s: %s)", request.method, request.path,
                   store, type(exc).__name__, exc)
    message = f"{store} is unavailable right now; the request was not carried out. Try again in a few seconds."
    if request.path_info.startswith("/v1/"):
        body = {"error": {"message": message, "type": "service_unavailable", "param": None, "code": "service_unavailable"}}
    else:
        body = {"detail": message, "code": "service_unavailable", "retry_after": RETRY_AFTER_SECONDS}
    response = JsonResponse(body, status=503)
    response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


class OutageMiddleware(_AsyncMiddleware):
    """A view that fails because Redis or PostgreSQL is unreachable answers 503 with Retry-After rather
    than 500: the client did nothing wrong and may simply try again (infra/outages.py)."""

    async def __call__(self, request):
        return await self.get_response(request)

    def process_exception(self, request, exception):
        store = outage_of(exception)
        return outage_response(request, store, exception) if store is not None else None


class RequestBodyLimitMiddleware(_AsyncMiddleware):
    """Every request body is held to a limit before any view reads it, and a larger one is a 413 that says
    the limit, in both error shapes.

    The routes that take a message (MESSAGE_ROUTES) accept BEAMCLAW["MESSAGE_BODY_MAX_BYTES"] (20 MiB),
    since inline images (base64 in the JSON) are large; every other body REQUEST_BODY_MAX_BYTES (2 MiB).
    Django alone cannot say this per route, and it would not be enough: DRF reads the request stream
    itself, past DATA_UPLOAD_MAX_MEMORY_SIZE, once `request.body` has refused it. A body without a
    Content-Length (chunked) is measured. Multipart bodies are uploads: their views check their size
    (docs/skills.md), and Django spools their files to disk."""

    # URL names of the routes that take a message (POST only).
    MESSAGE_ROUTES = frozenset({"openai-chat-completions", "openai-responses", "session-messages"})

    async def __call__(self, request):
        if request.content_type != "multipart/form-data":
            conf = settings.BEAMCLAW
            size = _body_size(request)
            if size > conf["REQUEST_BODY_MAX_BYTES"]:
                message_route = self._takes_a_message(request)
                limit = conf["MESSAGE_BODY_MAX_BYTES"] if message_route else conf["REQUEST_BODY_MAX_BYTES"]
                if size > limit:
                    return _too_large(request, limit, message_route)
        return await self.get_response(request)

    def _takes_a_message(self, request) -> bool:
        if request.method != "POST":
            return False
        try:
            return resolve(request.path_info).url_name in self.MESSAGE_ROUTES
        except Resolver404:
            return False


def _body_size(request) -> int:
    declared = request.META.get("CONTENT_LENGTH") or ""
    if declared.isdigit():
        return int(declared)
    try:
        return len(request.body)
    except RequestDataTooBig:
        return settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1


def _too_large(request, limit: int, takes_a_message: bool) -> JsonResponse:
    shown = f"{limit // 2**20} MiB ({limit} bytes)" if limit % 2**20 == 0 else f"{limit} bytes"
    message = f"The request body is larger than {shown}, the most {request.method} {request.path} accepts."
    if takes_a_message:
        message += " Link large images by URL instead: the gateway fetches them (docs/images.md)."
    error = {"message": message, "type": "invalid_request_error", "code": "request_too_large", "param": None}
    return JsonResponse({"detail": message, "code": "request_too_large", "error": error}, status=413)


class RejectNulMiddleware(_AsyncMiddleware):
    """Postgres cannot store NUL characters (in text or JSON), so a request carrying one in its query string
    or JSON body would fail deep inside with a 500. Refuse it at the door with a 400 that says why.

    Which bodies: every body under /v1/ and /api/ whatever its Content-Type (the OpenAI endpoint parses
    any body as JSON, as OpenAI's does, so a JSON body sent as text/plain, form-encoded or with no type
    reaches the database just the same), and any JSON body elsewhere."""

    async def __call__(self, request):
        problem, field = None, None
        if "\x00" in request.path_info or any("\x00" in k or "\x00" in v for k, vs in request.GET.lists() for v in vs):
            problem = "The URL contains a NUL character (%00), which is not allowed."
        # A multipart body is a file upload (POST /api/skills/: a zip is binary, NULs included). Only views
        # that accept multipart parse it (the others answer 415), and DRF's CharField refuses NUL in text fields.
        elif request.content_type == "application/json" or (
            request.path_info.startswith(BODY_CHECKED_PREFIXES) and request.content_type != "multipart/form-data"
        ):
            try:
                body = request.body
            except RequestDataTooBig:
                body = b""  # the view answers 413
            # A cheap look first; only a body that may hold a NUL is parsed to be sure (and to name the field).
            if b"\x00" in body or b"\\u0000" in body:
                has_nul, field = _nul_in_body(body)
                if has_nul:
                    problem = f"{field or 'The request body'} contains a NUL character (\\u0000), which is not allowed."
        if problem is None:
            return await self.get_response(request)
        error = {"message": problem, "type": "invalid_request_error", "code": "nul_character", "param": field}
        # Both shapes: REST clients read detail/code (docs/gateway.md "Errors"), OpenAI clients read error.
        return JsonResponse(
            {"detail": problem, "code": "nul_character", **({field: [problem]} if field else {}), "error": error},
            status=400,
        )


def _nul_in_body(body: bytes) -> tuple[bool, str | None]:
    """Whether the body holds a NUL, and the top-level field of a JSON object body whose value (or key)
    holds it, so the 400 names it.

    A body that parses and holds no NUL passes: `\\\\u0000` in JSON is a backslash followed by "u0000", not
    a NUL. One that does not parse (not JSON, or in a charset json.loads does not detect) is refused when
    it has either byte sequence: the view might still read it, and nothing here can tell."""
    try:
        data = json_input.loads(body)
    except (ValueError, UnicodeDecodeError):
        return True, None

    def has_nul(value) -> bool:
        if isinstance(value, str):
            return "\x00" in value
        if isinstance(value, dict):
            return any(has_nul(k) or has_nul(v) for k, v in value.items())
        if isinstance(value, list):
            return any(has_nul(v) for v in value)
        return False

    if isinstance(data, dict):
        field = next((key for key, value in data.items() if has_nul(key) or has_nul(value)), None)
        return field is not None, field
    return has_nul(data), None
