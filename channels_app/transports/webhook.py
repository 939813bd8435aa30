"""The webhook transport: a JSON POST to a URL a tenant chose.

Two kinds of target:

- A plain webhook (cron's `deliver`): `{"url": ..., "headers"?: {...}, "secret"?: ...}`. With a `secret` the
  body is signed as it is (`X-BeamClaw-Signature: sha256=<hex HMAC-SHA256 of the body>`), the contract
  docs/cron.md gives receivers.
- A webhook channel account: `{"account": <ChannelAccount id>, "to"?: ...}` (replies also carry `peer` and
  `in_reply_to`). The URL (the account's `callback_url`) and the secret are read from the account at
  each attempt, so the secret is never copied into a target (ChannelReply.target is shown in the admin)
  and a changed callback URL or secret applies to deliveries still being retried. The signature is the
  one the channel's inbound endpoint checks (channels_app/webhook_inbound.py):
  `X-BeamClaw-Timestamp: <unix seconds>` and `X-BeamClaw-Signature: sha256=<hex HMAC-SHA256 of
  "<timestamp>.<body>">`, taken fresh at each attempt, so a retry is inside a receiver's freshness window
  however late it comes. A disabled account, one that is not a webhook, or one without a callback URL is
  a permanent error.

The body is the message's `data` with `text` set to the message's text (and `to`, when the target has
one). `X-BeamClaw-Delivery` carries the delivery id, the same on every retry, so a receiver can drop
duplicates.
Network errors, timeouts, 408/425/429 and 5xx are transient; any other status, a redirect (not followed)
and a refused address are permanent.

Where a webhook may point is the gateway's address policy (beamclaw_project/infra/address_policy.py):
public addresses only unless the operator allows a range, checked when the target is saved (IP literals)
and before every attempt (every resolved address), with the connection pinned to the checked address.
What a tenant reads back in an error is deliberately poor: a status code and never the response body
(which could be an internal page's content), and one text for every connection failure, timeout or
refusal, so deliveries cannot be used to tell open ports from closed ones. The details go to the log.
"""

import hashlib
import hmac
import json
import logging
import time
from urllib.parse import urlsplit

import httpx
from django.conf import settings

from beamclaw_project.infra import address_policy
from channels_app.models import ChannelAccount
from channels_app.transport import (
    DeliveryReceipt,
    OutboundMessage,
    PermanentDeliveryError,
    TargetInvalid,
    TransientDeliveryError,
    Transport,
)

logger = logging.getLogger(__name__)

MAX_URL_LENGTH = 2000
MAX_HEADERS = 20
# Headers a target may not set: they describe the request itself or are ours.
RESERVED_HEADERS = {"content-type", "x-beamclaw-delivery", "x-beamclaw-signature", "x-beamclaw-timestamp"}
# Hop-by-hop and framing headers (RFC 9110 7.6.1) belong to the HTTP client: a tenant's `Transfer-Encoding`
# or `Content-Length` would contradict the body actually sent (request smuggling through a proxy), and
# `Host` would aim the request at another virtual host than the checked URL names.
HOP_BY_HOP_HEADERS = {"connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade", "host", "content-length"}
TRANSIENT_STATUSES = {408, 425, 429}
NO_ANSWER = "could not deliver: the webhook did not answer (connection failed, was refused or timed out)"
# What an account target may hold besides the account: where the message goes on the receiver's side.
ACCOUNT_TARGET_KEYS = {"account", "to", "peer", "in_reply_to"}
MAX_TO_LENGTH = 200


def timestamped_signature(secret: str, timestamp: str, body: bytes) -> str:
    """`sha256=<hex>` of HMAC-SHA256(secret, "<timestamp>.<body>"): the webhook channel's signature, both
    ways. The timestamp is inside what is signed, so a captured request cannot be sent again later with a
    fresh timestamp."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


class WebhookTransport(Transport):
    def parse_target(self, value: dict) -> dict:
        if "account" in value:
            return _account_target_parse(value)
        unknown = sorted(set(value) - {"url", "headers", "secret"})
        if unknown:
            raise TargetInvalid(f"Unknown key(s) {', '.join(unknown)}; allowed: url, headers, secret.")
        url = value.get("url")
        if not isinstance(url, str) or len(url) > MAX_URL_LENGTH:
            raise TargetInvalid("'url' must be an http(s) URL of at most 2000 characters.")
        parts = urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise TargetInvalid(f"'{url}' is not an http(s) URL.")
        if parts.username is not None or parts.password is not None:
            # The URL is shown to every key that can read the target; credentials in it would be too.
            raise TargetInvalid(
                "The URL may not carry credentials (user:password@); sign deliveries with 'secret', or send a token "
                "in a header (e.g. 'headers': {'Authorization': 'Bearer …'}), whose value is not shown back."
            )
        try:
            address_policy.check_literal(url.strip())
        except address_policy.TargetRefused as exc:
            raise TargetInvalid(f"Webhook refused: {exc.message}.") from None
        target = {"url": url.strip()}
        headers = value.get("headers") or {}
        if not isinstance(headers, dict) or len(headers) > MAX_HEADERS or not all(
            isinstance(k, str) and isinstance(v, str) and k.strip() and "\n" not in k + v for k, v in headers.items()
        ):
            raise TargetInvalid(f"'headers' must be an object of at most {MAX_HEADERS} string headers.")
        hop_by_hop = sorted(
            k for k in headers if k.strip().lower() in HOP_BY_HOP_HEADERS or k.strip().lower().startswith("proxy-")
        )
        if hop_by_hop:
            raise TargetInvalid(
                f"Header(s) {', '.join(hop_by_hop)} may not be set: connection and framing headers (Connection, "
                f"Keep-Alive, TE, Trailer, Transfer-Encoding, Upgrade, Proxy-*, Host, Content-Length) are the HTTP client's."
            )
        reserved = sorted(k for k in headers if k.strip().lower() in RESERVED_HEADERS)
        if reserved:
            raise TargetInvalid(f"Header(s) {', '.join(reserved)} are set by the gateway.")
        if headers:
            target["headers"] = headers
        secret = value.get("secret")
        if secret not in (None, ""):
            if not isinstance(secret, str):
                raise TargetInvalid("'secret' must be a string.")
            target["secret"] = secret
        return target

    def send(self, message: OutboundMessage) -> DeliveryReceipt:
        delivery_id = message.delivery_id
        try:
            if "account" in message.target:
                url, headers, body = _account_request(message)
            else:
                url, headers, body = _plain_request(message)
        except (KeyError, TypeError, AttributeError, ValueError) as exc:  # a target edited into an unusable shape (e.g. in the admin)
            raise PermanentDeliveryError(f"unusable delivery target: {exc}") from None
        timeout = message.timeout_seconds or settings.BEAMCLAW_CHANNELS["DELIVERY_TIMEOUT_SECONDS"]
        try:
            with address_policy.client(timeout=timeout, resolve_timeout=min(5.0, timeout)) as client:
                # Streamed and closed unread: only the status matters, and a body is never loaded or shown.
                with client.stream("POST", url, content=body, headers=headers) as response:
                    status = response.status_code
                    retry_after = _seconds(response.headers.get("Retry-After"))
        except address_policy.TargetRefused as exc:
            logger.warning("webhook delivery %s refused: %s", delivery_id, exc.message)
            if exc.address:
                raise PermanentDeliveryError(
                    f"refused: {exc.host} is not a public address ({exc.reason}); only public addresses are reached "
                    f"unless the operator allows the range ({address_policy.ALLOW_SETTING})"
                ) from None
            raise PermanentDeliveryError(f"refused: {exc.message}") from None
        except address_policy.ResolveFailed as exc:
            logger.warning("webhook delivery %s: %s", delivery_id, exc.message)
            raise TransientDeliveryError(f"could not deliver: {exc.message}") from None
        except httpx.InvalidURL as exc:
            raise PermanentDeliveryError(f"unusable delivery target: {exc}") from None
        except httpx.HTTPError as exc:
            logger.warning("webhook delivery %s to %s failed: %s: %s", delivery_id, _where(url), type(exc).__name__, exc)
            raise TransientDeliveryError(NO_ANSWER) from None
        if 200 <= status < 300:
            return DeliveryReceipt(delivery_id=delivery_id)
        if status >= 500 or status in TRANSIENT_STATUSES:
            raise TransientDeliveryError(f"HTTP {status}", retry_after=retry_after)
        detail = ": redirects are not followed" if 300 <= status < 400 else ""
        raise PermanentDeliveryError(f"HTTP {status}{detail}")


def _account_target_parse(value: dict) -> dict:
    unknown = sorted(set(value) - ACCOUNT_TARGET_KEYS)
    if unknown:
        raise TargetInvalid(
            f"Unknown key(s) {', '.join(unknown)} next to 'account'; a channel account's URL and secret are the "
            "account's own (its callback_url and secret)."
        )
    account = value["account"]
    if not isinstance(account, int) or isinstance(account, bool) or account < 1:
        raise TargetInvalid("'account' must be a channel account's id.")
    target = {"account": account}
    for key in ("to", "peer", "in_reply_to"):
        if value.get(key) not in (None, ""):
            if not isinstance(value[key], str) or len(value[key]) > MAX_TO_LENGTH:
                raise TargetInvalid(f"'{key}' must be a string of at most {MAX_TO_LENGTH} characters.")
            target[key] = value[key]
    return target


def _headers(delivery_id: str) -> dict:
    return {"Content-Type": "application/json", "User-Agent": "BeamClaw-Webhook/1", "X-BeamClaw-Delivery": delivery_id}


def _plain_request(message: OutboundMessage) -> tuple[str, dict, bytes]:
    body = json.dumps({**message.data, "text": message.text}).encode()
    headers = {**message.target.get("headers", {}), **_headers(message.delivery_id)}
    if message.target.get("secret"):
        digest = hmac.new(message.target["secret"].encode(), body, hashlib.sha256).hexdigest()
        headers["X-BeamClaw-Signature"] = f"sha256={digest}"
    return message.target["url"], headers, body


def _account_request(message: OutboundMessage) -> tuple[str, dict, bytes]:
    """The request for a webhook channel account, from the account as it is now (module docstring)."""
    account_id = message.target["account"]
    account = ChannelAccount.objects.filter(pk=account_id).only("kind", "enabled", "secret", "config").first()
    if account is None or account.kind != ChannelAccount.Kind.WEBHOOK:
        raise PermanentDeliveryError(f"channel account {account_id} is not a webhook account (any more)")
    if not account.enabled:
        raise PermanentDeliveryError(f"channel account {account_id} is disabled; enable it to send through it")
    url = (account.config or {}).get("callback_url")
    if not url:
        raise PermanentDeliveryError(
            f"channel account {account_id} has no callback_url: set one (config.callback_url) to receive replies"
        )
    fields = {**message.data, "text": message.text}
    if message.target.get("to"):
        fields["to"] = message.target["to"]
    body = json.dumps(fields).encode()
    timestamp = str(int(time.time()))
    headers = {
        **_headers(message.delivery_id),
        "X-BeamClaw-Timestamp": timestamp,
        "X-BeamClaw-Signature": timestamped_signature(account.secret, timestamp, body),
    }
    return url, headers, body


def _seconds(retry_after: str | None) -> float | None:
    """Retry-After in seconds; the HTTP-date form is left to the backoff."""
    try:
        return max(0.0, float(retry_after)) if retry_after else None
    except ValueError:
        return None


def _where(url: str) -> str:
    """host:port of a URL, for logs (a URL may carry credentials)."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
