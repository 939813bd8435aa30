"""Where a job's final reply goes. One transport today, the webhook; chat channels plug in beside it.

A delivery target is stored as `{"kind": "webhook", "url": ..., "headers"?: {...}, "secret"?: ...}`. The
webhook receives a JSON POST; with a `secret` the body is signed (`X-BeamClaw-Signature: sha256=<hex HMAC>`).
`X-BeamClaw-Delivery` is the same on every retry of one delivery, so a receiver can drop duplicates.
Errors are transient (network, timeout, 408/425/429, 5xx: retried with backoff) or permanent (any other
status, a redirect, a refused address: not retried).

Where a webhook may point is the gateway's address policy (beamclaw_project/infra/address_policy.py):
public addresses only unless the operator allows a range, checked when the job is saved (IP literals) and
before every attempt (every resolved address), with the connection pinned to the checked address.
What a tenant reads back in `delivery_error` is deliberately poor: a status code and never the response
body (which could be an internal page's content), and one text for every connection failure, timeout or
refusal, so deliveries cannot be used to tell open ports from closed ones. The details go to the log.
"""

import hashlib
import hmac
import json
import logging
import re
from urllib.parse import urlsplit

import httpx
from django.conf import settings

from beamclaw_project.infra import address_policy

logger = logging.getLogger(__name__)

MAX_URL_LENGTH = 2000
MAX_HEADERS = 20
# Headers a target may not set: they describe the request itself or are ours.
RESERVED_HEADERS = {"content-type", "x-beamclaw-delivery", "x-beamclaw-signature"}
# Hop-by-hop and framing headers (RFC 9110 7.6.1) belong to the HTTP client: a tenant's `Transfer-Encoding`
# or `Content-Length` would contradict the body actually sent (request smuggling through a proxy), and
# `Host` would aim the request at another virtual host than the checked URL names.
HOP_BY_HOP_HEADERS = {"connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade", "host", "content-length"}
TRANSIENT_STATUSES = {408, 425, 429}
NO_ANSWER = "could not deliver: the webhook did not answer (connection failed, was refused or timed out)"


class DeliveryTargetError(ValueError):
    """A delivery target that cannot be used (400 at the API)."""


class DeliveryError(Exception):
    def __init__(self, message: str, *, transient: bool):
        super().__init__(message)
        self.message = message
        self.transient = transient


def deliver_parse(value) -> dict | None:
    """The normalized target from the API's `deliver`: null, a URL, or an object with `kind`."""
    if value in (None, "", {}):
        return None
    if isinstance(value, str):
        value = {"kind": "webhook", "url": value}
    if not isinstance(value, dict):
        raise DeliveryTargetError('Give a webhook URL or {"kind": "webhook", "url": "https://…"}.')
    kind = value.get("kind", "webhook")
    if kind != "webhook":
        raise DeliveryTargetError(f"Delivery kind '{kind}' is not available; use 'webhook'.")
    unknown = sorted(set(value) - {"kind", "url", "headers", "secret"})
    if unknown:
        raise DeliveryTargetError(f"Unknown key(s) {', '.join(unknown)}; allowed: url, headers, secret.")
    url = value.get("url")
    if not isinstance(url, str) or len(url) > MAX_URL_LENGTH:
        raise DeliveryTargetError("'url' must be an http(s) URL of at most 2000 characters.")
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DeliveryTargetError(f"'{url}' is not an http(s) URL.")
    if parts.username is not None or parts.password is not None:
        # The URL is shown to every key that can read the job; credentials in it would be too.
        raise DeliveryTargetError(
            "The URL may not carry credentials (user:password@); sign deliveries with 'secret', or send a token "
            "in a header (e.g. 'headers': {'Authorization': 'Bearer …'}), whose value is not shown back."
        )
    try:
        address_policy.check_literal(url.strip())
    except address_policy.TargetRefused as exc:
        raise DeliveryTargetError(f"Webhook refused: {exc.message}.") from None
    target = {"kind": "webhook", "url": url.strip()}
    headers = value.get("headers") or {}
    if not isinstance(headers, dict) or len(headers) > MAX_HEADERS or not all(
        isinstance(k, str) and isinstance(v, str) and k.strip() and "\n" not in k + v for k, v in headers.items()
    ):
        raise DeliveryTargetError(f"'headers' must be an object of at most {MAX_HEADERS} string headers.")
    hop_by_hop = sorted(
        k for k in headers if k.strip().lower() in HOP_BY_HOP_HEADERS or k.strip().lower().startswith("proxy-")
    )
    if hop_by_hop:
        raise DeliveryTargetError(
            f"Header(s) {', '.join(hop_by_hop)} may not be set: connection and framing headers (Connection, "
            f"Keep-Alive, TE, Trailer, Transfer-Encoding, Upgrade, Proxy-*, Host, Content-Length) are the HTTP client's."
        )
    reserved = sorted(k for k in headers if k.strip().lower() in RESERVED_HEADERS)
    if reserved:
        raise DeliveryTargetError(f"Header(s) {', '.join(reserved)} are set by the gateway.")
    if headers:
        target["headers"] = headers
    secret = value.get("secret")
    if secret not in (None, ""):
        if not isinstance(secret, str):
            raise DeliveryTargetError("'secret' must be a string.")
        target["secret"] = secret
    return target


MASK = "********"
_CREDENTIAL_HEADER = re.compile(r"authorization|cookie|token|secret|password|api[-_]?key|auth", re.I)


def _masked_headers(headers: dict) -> dict:
    return {k: MASK if _CREDENTIAL_HEADER.search(k) else v for k, v in headers.items()}


def deliver_public(target: dict | None) -> dict | None:
    """The target as shown to API clients: the secret and credential-bearing header values are write-only."""
    if not target:
        return None
    shown = dict(target)
    if target.get("secret"):
        shown["secret"] = MASK
    if target.get("headers"):
        shown["headers"] = _masked_headers(target["headers"])
    return shown


def deliver_keep_masked(new: dict | None, old: dict | None) -> dict | None:
    """`new` with masked values (a PUT of what GET showed) replaced by what `old` stores."""
    if not new or not old:
        return new
    kept = dict(new)
    if kept.get("secret") == MASK and old.get("secret"):
        kept["secret"] = old["secret"]
    if kept.get("headers"):
        stored = {k.lower(): v for k, v in (old.get("headers") or {}).items()}
        kept["headers"] = {
            k: stored.get(k.lower(), v) if v == MASK else v for k, v in kept["headers"].items()
        }
    return kept


def webhook_send(*, target: dict, payload: dict, delivery_id: str) -> int:
    """POST the payload; returns the HTTP status or raises DeliveryError."""
    url = target["url"]
    body = json.dumps(payload).encode()
    headers = {
        **target.get("headers", {}),
        "Content-Type": "application/json",
        "User-Agent": "BeamClaw-Cron/1",
        "X-BeamClaw-Delivery": delivery_id,
    }
    if target.get("secret"):
        digest = hmac.new(target["secret"].encode(), body, hashlib.sha256).hexdigest()
        headers["X-BeamClaw-Signature"] = f"sha256={digest}"
    timeout = settings.BEAMCLAW_CRON["DELIVERY_TIMEOUT_SECONDS"]
    try:
        with address_policy.client(timeout=timeout, resolve_timeout=min(5.0, timeout)) as client:
            # Streamed and closed unread: only the status matters, and a body is never loaded or shown.
            with client.stream("POST", url, content=body, headers=headers) as response:
                status = response.status_code
    except address_policy.TargetRefused as exc:
        logger.warning("webhook delivery %s refused: %s", delivery_id, exc.message)
        if exc.address:
            raise DeliveryError(
                f"refused: {exc.host} is not a public address ({exc.reason}); only public addresses are reached "
                f"unless the operator allows the range ({address_policy.ALLOW_SETTING})",
                transient=False,
            ) from None
        raise DeliveryError(f"refused: {exc.message}", transient=False) from None
    except address_policy.ResolveFailed as exc:
        logger.warning("webhook delivery %s: %s", delivery_id, exc.message)
        raise DeliveryError(f"could not deliver: {exc.message}", transient=True) from None
    except httpx.InvalidURL as exc:  # a target edited into an unusable shape (e.g. in the admin)
        raise DeliveryError(f"unusable delivery target: {exc}", transient=False) from None
    except httpx.HTTPError as exc:
        logger.warning("webhook delivery %s to %s failed: %s: %s", delivery_id, _where(url), type(exc).__name__, exc)
        raise DeliveryError(NO_ANSWER, transient=True) from None
    if 200 <= status < 300:
        return status
    transient = status >= 500 or status in TRANSIENT_STATUSES
    detail = ": redirects are not followed" if 300 <= status < 400 else ""
    raise DeliveryError(f"HTTP {status}{detail}", transient=transient)


def _where(url: str) -> str:
    """host:port of a URL, for logs (a URL may carry credentials)."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
