"""The Discord transport: a reply (or a cron delivery, or an agent's `message`) posted by a tenant's bot.

Target: `{"account": <ChannelAccount id>, "channel_id"?, "to"?, "in_reply_to"?}`. The token is read from the
account at send time, so it is never copied into a reply's target (which the admin shows). `channel_id`
is where a conversation's reply goes; `to` is what a tenant named (cron, the `message` tool):
`channel:<id>`, `user:<id>` (a DM), or a bare id tried as a channel first and then as a user, Discord's ids
being unique across both.

Discord allows 2,000 characters per message: a longer text goes out as several messages, in order, split
at a line break where there is one and never inside a code block (an open fence is closed at the end of one
message and opened again, with its language, at the start of the next). Each message carries a nonce made
from the delivery id and its index, with `enforce_nonce`, so a retried delivery does not post again what
Discord already took. Errors: 429 (with Discord's `retry_after`), 5xx and network failures are transient;
401/403/404 and other 4xx are permanent, with a message saying what to fix.

The base URL is the operator's (DISCORD_API_BASE_URL), not a tenant's, so it is not subject to the
outbound address policy that guards tenant-chosen URLs.
"""

import hashlib
import logging
import re
import threading
from http.cookiejar import CookieJar, DefaultCookiePolicy

import httpx
from django.conf import settings

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

MAX_MESSAGE_CHARS = 2000
_FENCE_CLOSE = "\n```"
_ID = re.compile(r"^[0-9]{1,20}$")
_TO = re.compile(r"^(?:(channel|user):)?([0-9]{1,20})$")


def split_message(text: str, limit: int = MAX_MESSAGE_CHARS) -> list[str]:
    """`text` in pieces of at most `limit` characters that each render on their own: cut at a line break
    (or a space) where one is near, code fences closed and reopened across a cut."""
    pieces: list[str] = []
    reopen = ""  # the fence line to open the next piece with, when the last one ended inside a code block
    rest = text
    while rest:
        budget = limit - len(reopen)
        if len(rest) <= budget:
            pieces.append(reopen + rest)
            break
        window = rest[: budget - len(_FENCE_CLOSE)]
        cut = window.rfind("\n")
        if cut < len(window) // 2:
            space = window.rfind(" ")
            cut = space if space >= len(window) // 2 else len(window)
        piece, rest = reopen + rest[:cut], rest[cut:]
        if rest[:1] in ("\n", " "):
            rest = rest[1:]  # the break itself: the next message starts on a line of its own anyway
        fence = _open_fence(piece)
        if fence is not None:
            piece += _FENCE_CLOSE
            reopen = (fence if len(fence) <= 40 else "```") + "\n"
        else:
            reopen = ""
        pieces.append(piece)
    return pieces or [""]


def _open_fence(text: str) -> str | None:
    """The opening line of a code fence still open at the end of `text`, else None."""
    opened = None
    for line in text.split("\n"):
        stripped = line.strip()
        if stripped.startswith("```"):
            opened = None if opened is not None else stripped
    return opened


def _nonce(delivery_id: str, index: int) -> str:
    return hashlib.sha256(f"{delivery_id}:{index}".encode()).hexdigest()[:25]  # Discord takes at most 25


class DiscordTransport(Transport):
    def parse_target(self, value: dict) -> dict:
        unknown = sorted(set(value) - {"account", "channel_id", "to", "in_reply_to"})
        if unknown:
            raise TargetInvalid(f"Unknown key(s) {', '.join(unknown)}; allowed: account, channel_id, to, in_reply_to.")
        if not isinstance(value.get("account"), int):
            raise TargetInvalid("'account' must be the id of a Discord channel account.")
        if value.get("to") is not None and not _TO.match(str(value["to"])):
            raise TargetInvalid("'to' must be a Discord channel or user id: '<id>', 'channel:<id>' or 'user:<id>'.")
        for key in ("channel_id", "in_reply_to"):
            if value.get(key) is not None and not _ID.match(str(value[key])):
                raise TargetInvalid(f"'{key}' must be a Discord id.")
        if not value.get("channel_id") and not value.get("to"):
            raise TargetInvalid("Say where: 'to' (a channel or user id).")
        return {k: v for k, v in value.items() if v is not None}

    def send(self, message: OutboundMessage) -> DeliveryReceipt:
        target = self.parse_target_stored(message.target)
        account = ChannelAccount.objects.filter(pk=target["account"], kind=ChannelAccount.Kind.DISCORD).first()
        if account is None:
            raise PermanentDeliveryError("the Discord channel account no longer exists")
        if not account.enabled:
            raise PermanentDeliveryError(f"the Discord channel '{account.name}' is disabled")
        timeout = message.timeout_seconds or settings.BEAMCLAW_CHANNELS["DELIVERY_TIMEOUT_SECONDS"]
        api = _Api(_client(), account.secret, timeout, message.delivery_id)
        pieces = split_message(message.text or "…")
        channel_id, first = self._first_post(api, target, self._body(message, target, pieces, 0))
        for index in range(1, len(pieces)):
            api.call("POST", f"/channels/{channel_id}/messages", self._body(message, target, pieces, index))
        return DeliveryReceipt(delivery_id=message.delivery_id, remote_id=str(first.get("id", "")))

    def parse_target_stored(self, value) -> dict:
        """A target as stored: a conversation's reply also records its peer, which Discord has no use for."""
        try:
            return self.parse_target({k: v for k, v in dict(value).items() if k != "peer"})
        except (TargetInvalid, TypeError, ValueError) as exc:  # a target edited into an unusable shape
            raise PermanentDeliveryError(f"unusable delivery target: {getattr(exc, 'message', exc)}") from None

    @staticmethod
    def _body(message: OutboundMessage, target: dict, pieces: list[str], index: int) -> dict:
        body = {
            "content": pieces[index], "nonce": _nonce(message.delivery_id, index), "enforce_nonce": True,
            # A model's text must not ping @everyone or roles; the user answered is notified.
            "allowed_mentions": {"parse": [], "replied_user": True},
        }
        if index == 0 and target.get("in_reply_to"):
            body["message_reference"] = {"message_id": target["in_reply_to"], "fail_if_not_exists": False}
        return body

    def _first_post(self, api: "_Api", target: dict, body: dict) -> tuple[str, dict]:
        """Post the first piece where the target says; (the channel it went to, the posted message). A bare
        `to` is tried as a channel, then, when Discord knows no such channel, as a user to DM."""
        if target.get("channel_id"):
            scope, snowflake = "channel", str(target["channel_id"])
        else:
            scope, snowflake = _TO.match(str(target["to"])).groups()
        if scope != "user":
            try:
                return snowflake, api.call("POST", f"/channels/{snowflake}/messages", body)
            except _DiscordError as exc:
                if scope == "channel" or exc.status != 404:
                    raise
        dm = api.call("POST", "/users/@me/channels", {"recipient_id": snowflake})
        return str(dm["id"]), api.call("POST", f"/channels/{dm['id']}/messages", body)


class _DiscordError(PermanentDeliveryError):
    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


_shared_client: httpx.Client | None = None
_shared_client_lock = threading.Lock()


def _client() -> httpx.Client:
    """One client per process, shared by the worker's threads (httpx's Client is thread-safe): building one
    loads the TLS trust store, ~30 ms of CPU that every reply paid, and its pool keeps Discord's connection."""
    global _shared_client
    with _shared_client_lock:
        if _shared_client is None:
            _shared_client = httpx.Client(
                base_url=settings.DISCORD_API_BASE_URL, headers={"User-Agent": "DiscordBot (BeamClaw, 1)"},
                # Every tenant's bot shares it: no cookie set for one reaches another.
                cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
            )
        return _shared_client


class _Api:
    """One delivery's calls to Discord's REST API, errors sorted into transient and permanent."""

    def __init__(self, client: httpx.Client, token: str, timeout: float, delivery_id: str):
        self.client = client
        self.headers = {"Authorization": f"Bot {token}"}
        self.timeout = timeout
        self.delivery_id = delivery_id

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        try:
            response = self.client.request(method, path, json=body, headers=self.headers, timeout=self.timeout)
        except httpx.HTTPError as exc:
            logger.warning("discord delivery %s: %s %s failed: %s", self.delivery_id, method, path, type(exc).__name__)
            raise TransientDeliveryError("could not reach Discord (connection failed or timed out)") from None
        status = response.status_code
        if status < 300:
            return response.json() if response.content else {}
        try:
            error = response.json()
        except ValueError:
            error = {}
        if not isinstance(error, dict):
            error = {}
        if status == 429:
            retry_after = error.get("retry_after") or response.headers.get("Retry-After")
            raise TransientDeliveryError("Discord rate limit (HTTP 429)", retry_after=_float(retry_after))
        if status >= 500:
            raise TransientDeliveryError(f"Discord is having trouble (HTTP {status})")
        code = error.get("code")
        logger.warning("discord delivery %s: %s %s → %s %s", self.delivery_id, method, path, status, error.get("message", ""))
        if status == 401:
            raise _DiscordError("Discord refused the bot token (HTTP 401): set a valid token on the channel account", status)
        if status == 403:
            raise _DiscordError("the bot may not post there (HTTP 403): check its permissions in that server or channel", status)
        if status == 404:
            raise _DiscordError("unknown Discord channel or user (HTTP 404)", status)
        raise _DiscordError(f"Discord refused the message (HTTP {status}{f', code {code}' if code else ''})", status)


def _float(value) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except (TypeError, ValueError):
        return None
