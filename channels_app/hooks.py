"""`POST /hooks/<account id>`: the webhook channel's inbound endpoint, a thin edge over
channels_app/webhook_inbound.py (which holds the rules and their reasons; docs/channels.md the wire shapes).

Not under /api/: the caller holds no API key, only the channel's signing secret. Answers are JSON in the
REST API's error shape (`detail`, `code`)."""

from django.core.exceptions import RequestDataTooBig
from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt

from beamclaw_project import json_input
from beamclaw_project.errors import DomainError, LimitExceeded
from channels_app import webhook_inbound


def _error(exc: DomainError) -> JsonResponse:
    body = {"detail": exc.message, "code": exc.code}
    if exc.field and exc.status == 400:
        body[exc.field] = [exc.message]
    response = JsonResponse(body, status=exc.status)
    if isinstance(exc, LimitExceeded):
        response["Retry-After"] = str(exc.retry_after)
    return response


def _body(request) -> bytes:
    """At most MAX_BODY_BYTES + 1 bytes: enough to tell an oversized body, never more held for it."""
    declared = request.META.get("CONTENT_LENGTH") or ""
    if declared.isdigit() and int(declared) > webhook_inbound.MAX_BODY_BYTES:
        raise webhook_inbound.WebhookBodyTooLarge()
    try:
        return request.read(webhook_inbound.MAX_BODY_BYTES + 1)
    except RequestDataTooBig:
        raise webhook_inbound.WebhookBodyTooLarge() from None


def _json(body: bytes):
    try:
        return json_input.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise webhook_inbound.WebhookMessageInvalid(f"The body is not valid JSON: {exc}", field="body") from None


@csrf_exempt
def webhook_receive(request, account_id: int):
    if request.method != "POST":
        response = JsonResponse(
            {"detail": f"Method {request.method} is not allowed: a webhook message is a signed POST.",
             "code": "method_not_allowed"}, status=405,
        )
        response["Allow"] = "POST"
        return response
    try:
        body = _body(request)
        # The order is the service's rule: nothing of the body is parsed before its signature is checked.
        account = webhook_inbound.webhook_account_verify(
            account_id=account_id,
            timestamp=request.headers.get(webhook_inbound.TIMESTAMP_HEADER),
            signature=request.headers.get(webhook_inbound.SIGNATURE_HEADER),
            body=body,
        )
        result = webhook_inbound.webhook_message_receive(account=account, data=_json(body))
    except DomainError as exc:
        return _error(exc)
    return JsonResponse(
        {"run_id": str(result.run.pk), "session": str(result.session.pk), "duplicate": result.duplicate},
        status=200 if result.duplicate else 202,
    )
