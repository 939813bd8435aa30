"""REST errors shared by every app's API, and the one exception handler that shapes them all.

Every error under /api/ is a JSON object with:

- `detail`: one human-readable message, always present;
- `code`: a stable machine-readable code (`not_found`, `invalid`, `insufficient_scope`, `rate_limited`, ...);
- for a 400 about the input, each field at fault as `"<field>": ["message", ...]` (always a list; a nested
  object's fields nest as objects), with `detail` repeating them as `field: message` sentences;
- extras where they help: `required_scope` on a missing scope (403), `retry_after` seconds on 429 (also in
  the `Retry-After` header).

That is DRF's own shape (`{"detail"}` or field errors as lists) with `detail` and `code` always filled in,
so a client can show `detail` without knowing which kind of error it got.

Views let the services' domain errors (beamclaw_project/errors.py) through: this is the one place that
turns them into responses, so no view catches them one by one.
"""

import re

from django.apps import apps
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404, HttpResponsePermanentRedirect, JsonResponse
from django.urls import Resolver404, resolve
from django.utils.translation import ngettext
from django.views.decorators.csrf import csrf_exempt
from rest_framework.exceptions import APIException, NotFound, PermissionDenied, Throttled, ValidationError

from beamclaw_project.errors import DomainError, InvalidInput, LimitExceeded


class MissingScopeError(PermissionDenied):
    """403: the API key is valid but lacks the scope the request needs."""

    default_code = "insufficient_scope"

    def __init__(self, detail: str, *, scope: str):
        super().__init__(detail, code=self.default_code)
        self.scope = scope


# Django's get_object_or_404 says "No <ModelClass> matches the given query."; the class name is ours, not
# the API's, so it is replaced by the model's verbose name, which is the API's word for it ("session").
_DJANGO_NOT_FOUND = re.compile(r"^No (\w+) matches the given query\.$")


def _not_found_message(exc: Http404, view) -> str:
    match = _DJANGO_NOT_FOUND.match(str(exc))
    if match is not None:
        model = next((m for m in apps.get_models() if m.__name__ == match.group(1)), None)
    elif str(exc):
        return str(exc)
    else:
        # DRF raises a bare Http404 for a malformed id (not a UUID): the view's model is the thing not found.
        model = getattr(getattr(view, "queryset", None), "model", None)
    if model is None:
        return "Not found."
    noun = str(model._meta.verbose_name)
    return f"{noun[:1].upper()}{noun[1:]} not found."


def _throttled_message(exc: Throttled) -> str:
    """DRF appends "Expected available in N seconds." to a Throttled message; ours already say when to
    retry, and `retry_after` carries the number, so the sentence would only repeat it."""
    message = str(exc.detail)
    if exc.wait is not None:
        suffix = " " + ngettext(
            exc.extra_detail_singular.format(wait=exc.wait), exc.extra_detail_plural.format(wait=exc.wait), exc.wait
        )
        if message.endswith(suffix):
            message = message[: -len(suffix)]
    return message


def _field_errors(detail):
    """Field errors with every leaf a list of strings ({"agent": "msg"} becomes {"agent": ["msg"]})."""
    if isinstance(detail, dict):
        return {str(field): _field_errors(value) for field, value in detail.items()}
    if isinstance(detail, list):
        if all(isinstance(item, str) for item in detail):
            return [str(item) for item in detail]
        return [_field_errors(item) for item in detail]
    return [str(detail)]


def _sentences(errors, path: str = "") -> list[str]:
    if isinstance(errors, dict):
        return [s for field, value in errors.items() for s in _sentences(value, f"{path}.{field}" if path else field)]
    if isinstance(errors, list) and all(isinstance(item, str) for item in errors):
        if path in ("", "non_field_errors"):
            return list(errors)
        return [f"{path}: {message}" for message in errors]
    return [s for index, item in enumerate(errors) for s in _sentences(item, f"{path}.{index}" if path else str(index))]


def _drf_exception(exc: DomainError) -> APIException:
    """The DRF exception that answers a domain error: bad input as field errors under its `field`, a limit as
    a 429 with Retry-After, anything else with the error's own status and code."""
    if isinstance(exc, InvalidInput):
        return ValidationError({exc.field: [exc.message]} if exc.field else [exc.message])
    if isinstance(exc, LimitExceeded):
        return Throttled(wait=exc.retry_after, detail=exc.message, code=exc.code)
    error = APIException(exc.message, code=exc.code)
    error.status_code = exc.status
    return error


def _code(exc: APIException) -> str:
    codes = exc.get_codes()
    return codes if isinstance(codes, str) else exc.default_code


def api_exception_handler(exc, context):
    """REST_FRAMEWORK["EXCEPTION_HANDLER"]: DRF's handler (headers, rollback), then the body reshaped."""
    # Imported here: rest_framework.views loads the authentication classes, which import this module.
    from rest_framework.views import exception_handler as drf_exception_handler

    if isinstance(exc, DomainError):
        exc = _drf_exception(exc)
    elif isinstance(exc, Http404):
        exc = NotFound(_not_found_message(exc, context.get("view")))
    elif isinstance(exc, DjangoPermissionDenied):
        exc = PermissionDenied(*exc.args)
    response = drf_exception_handler(exc, context)
    if response is None:
        return None  # not an API error: Django's 500 handling (and logging) takes it
    if isinstance(exc, ValidationError):
        detail = exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail}
        errors = _field_errors(detail)
        body = {"detail": " ".join(_sentences(errors)) or "Invalid input.", "code": "invalid", **errors}
    else:
        if isinstance(exc, Throttled):
            message = _throttled_message(exc)
        elif isinstance(exc.detail, (dict, list)):
            message = " ".join(_sentences(_field_errors(exc.detail)))
        else:
            message = str(exc.detail)
        body = {"detail": message, "code": _code(exc)}
        if isinstance(exc, MissingScopeError):
            body["required_scope"] = exc.scope
        if isinstance(exc, Throttled) and exc.wait is not None:
            body["retry_after"] = exc.wait
    response.data = body
    return response


@csrf_exempt  # an API client has no CSRF cookie; without this its POST would get Django's HTML 403
def endpoint_not_found(request, path: str = ""):
    """The last route under /api/: a URL no endpoint matches gets the API's 404 shape, not Django's HTML page.

    Matching everything would also stop CommonMiddleware's trailing-slash redirect, so it is kept here: a GET
    that lacks only the slash is redirected as before; other methods (whose body a redirect would lose) get
    the 404 with the right URL in the message.
    """
    with_slash = f"{request.path}/"
    try:
        suggestion = None if request.path.endswith("/") else resolve(with_slash)
    except Resolver404:
        suggestion = None
    if suggestion is not None and suggestion.func is not endpoint_not_found:
        if request.method in ("GET", "HEAD"):
            return HttpResponsePermanentRedirect(with_slash)
        message = f"No endpoint at {request.path}; did you mean {with_slash} (with the trailing slash)?"
    else:
        message = f"No endpoint at {request.path}. The endpoints are listed at /api/docs/."
    return JsonResponse({"detail": message, "code": "not_found"}, status=404)
