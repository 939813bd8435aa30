"""Where a job's final reply goes. One transport today, the webhook; chat channels plug in beside it.

A delivery target is stored as `{"kind": "webhook", "url": ..., "headers"?: {...}, "secret"?: ...}`. The
webhook receives a JSON POST; with a `secret` the body is signed (`X-BeamClaw-Signature: sha256=<hex HMAC>`).
`X-BeamClaw-Delivery` is the same on every retry of one delivery, so a receiver can drop duplicates.
Errors are transient (network, timeout, 408/425/429, 5xx: retried with backoff) or permanent (any other
status, a redirect, a refused address: not retried).
"""

import hashlib
import hmac
import ipaddress
import json
import socket
from urllib.parse import urlsplit

import httpx
from django.conf import settings

MAX_URL_LENGTH = 2000
MAX_HEADERS = 20
# Headers a target may not set: they describe the request itself or are ours.
RESERVED_HEADERS = {"content-type", "content-length", "host", "x-beamclaw-delivery", "x-beamclaw-signature"}
TRANSIENT_STATUSES = {408, 425, 429}


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
    _check_literal_address(parts.hostname)
    target = {"kind": "webhook", "url": url.strip()}
    headers = value.get("headers") or {}
    if not isinstance(headers, dict) or len(headers) > MAX_HEADERS or not all(
        isinstance(k, str) and isinstance(v, str) and k.strip() and "\n" not in k + v for k, v in headers.items()
    ):
        raise DeliveryTargetError(f"'headers' must be an object of at most {MAX_HEADERS} string headers.")
    reserved = sorted(k for k in headers if k.lower() in RESERVED_HEADERS)
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


def deliver_public(target: dict | None) -> dict | None:
    """The target as shown to API clients: the secret is write-only."""
    if not target:
        return None
    return {**target, "secret": "********"} if target.get("secret") else dict(target)


def _refusal(address) -> str | None:
    if address.is_link_local or address.is_multicast or address.is_unspecified or address.is_reserved:
        return f"{address} is a link-local, multicast or reserved address"
    if not settings.BEAMCLAW_CRON["WEBHOOK_ALLOW_PRIVATE"] and not address.is_global:
        return f"{address} is not a public address (BEAMCLAW_CRON_WEBHOOK_ALLOW_PRIVATE is off)"
    return None


def _check_literal_address(host: str) -> None:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return
    reason = _refusal(address)
    if reason:
        raise DeliveryTargetError(f"Webhook refused: {reason}.")


def _check_resolved(host: str, port: int) -> None:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise DeliveryError(f"cannot resolve {host}: {exc}", transient=True) from None
    for info in infos:
        reason = _refusal(ipaddress.ip_address(info[4][0]))
        if reason:
            raise DeliveryError(f"refused: {host} resolves to {reason}", transient=False)


def webhook_send(*, target: dict, payload: dict, delivery_id: str) -> int:
    """POST the payload; returns the HTTP status or raises DeliveryError."""
    url = target["url"]
    parts = urlsplit(url)
    _check_resolved(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
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
    try:
        response = httpx.post(
            url, content=body, headers=headers, follow_redirects=False,
            timeout=settings.BEAMCLAW_CRON["DELIVERY_TIMEOUT_SECONDS"],
        )
    except httpx.HTTPError as exc:
        raise DeliveryError(f"{type(exc).__name__}: {exc}", transient=True) from None
    status = response.status_code
    if 200 <= status < 300:
        return status
    transient = status >= 500 or status in TRANSIENT_STATUSES
    detail = "redirects are not followed" if 300 <= status < 400 else response.text[:200]
    raise DeliveryError(f"HTTP {status}: {detail}".rstrip(": "), transient=transient)
