"""Fake Discord (REST API v10 plus the gateway WebSocket) for the test suite.

The real ``discord.py`` client logs in here once pointed at the fake::

    discord.http.Route.BASE = "http://127.0.0.1:P/api/v10"
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL("ws://127.0.0.1:P/gateway/")

so the wire format follows Discord's: snowflake ids, full message/guild/channel
objects, error envelopes ``{"code", "message"[, "errors"]}``, rate-limit
headers, gateway opcodes and close codes.  What a bot can do:

- REST (``Authorization: Bot <token>``; an unknown token is a 401):
  ``GET /users/@me``, ``/users/{id}``, ``/oauth2/applications/@me``,
  ``/gateway[/bot]``; ``GET /channels/{c}``; ``POST /channels/{c}/messages``
  (JSON or multipart, 2000-character limit, ``nonce`` + ``enforce_nonce``
  de-duplication, replies); ``GET/PATCH/DELETE /channels/{c}/messages/{m}``;
  ``POST /channels/{c}/typing``; ``POST /users/@me/channels`` (DMs);
  ``POST /interactions/{id}/{token}/callback`` and the interaction webhook
  (``/webhooks/{app}/{token}[/messages/{m|@original}]``).  Anything else is a
  404, reported on stderr so a missing route is visible.
- Gateway at ``/gateway/``: HELLO, heartbeats, IDENTIFY (READY, then
  GUILD_CREATE per guild), RESUME (replays what the session missed, then
  RESUMED).  Every event goes to each of the bot's sessions, connected or not:
  a session's events are kept so a RESUME after a drop loses nothing, as on
  Discord.  Sessions honour the intents they identified with (GUILD_MESSAGES,
  DIRECT_MESSAGES, MESSAGE_CONTENT) and shards.  A client closing with
  1000/1001 ends its session.

Control endpoints (JSON in and out), for tests in another process:

- ``POST /_fake/bots`` ``{"token", "id"?, "username"?}`` registers a bot; its user object.
- ``POST /_fake/guilds`` ``{"id"?, "name", "channels": [{"id"?, "name"}], "bots": [ids]}``
  creates a guild, or adds channels and bots to an existing one (bots added
  get GUILD_CREATE, the others CHANNEL_CREATE); the guild with its channels.
- ``POST /_fake/messages`` ``{"channel_id" | "dm": {"bot_id", "user_id"?},
  "author": {"id", "username", "bot"?}, "content", "mentions"?: [ids],
  "reply_to"?: id}`` is a user's message, dispatched as MESSAGE_CREATE to each
  bot that sees the channel; the message.
- ``GET /_fake/sent?channel_id=&bot_id=``: messages bots created, oldest first,
  each with ``edits`` (the message after each edit), ``deleted`` and ``via``
  (``rest``, ``interaction`` or ``followup``).
- ``GET /_fake/typing?channel_id=&bot_id=``: typing calls ``{"channel_id", "bot_id", "at"}``.
- ``GET /_fake/requests?bot_id=``: every REST call ``{"method", "path", "query", "bot_id", "status", "at"}``.
- ``POST /_fake/ratelimit`` ``{"channel_id", "count", "retry_after"}``: the next
  ``count`` message POSTs to the channel get a 429.
- ``POST /_fake/drop`` ``{"bot_id"?, "code"?: 4000, "abrupt"?: false,
  "reconnect_delay"?: 0}`` closes the gateway connections of a bot (or of all
  bots); ``abrupt`` cuts TCP without a close frame.  ``reconnect_delay``
  stalls the bot's next IDENTIFY/RESUME that long, so events sent meanwhile
  are certain to be missed and replayed.  ``{"dropped": n}``.
- ``POST /_fake/click`` ``{"message_id", "custom_id", "user": {"id", "username"},
  "values"?: [...], "respond_within"?: 3.0}`` presses a component of a bot's
  message: INTERACTION_CREATE to that bot; ``{"id", "token"}``.
- ``GET /_fake/interactions?bot_id=``: clicks with the ``callbacks`` accepted,
  ``response_message_id`` and ``followups``.
- ``GET /_fake/connections``: ``{bot_id: {"connected", "sessions", "identifies", "resumes"}}``.
- ``GET /_fake/health``.

Run standalone with ``python -m tests.fakes.discord_server [--host H] [--port P]``;
it prints ``LISTENING <port>`` once ready and exits cleanly on SIGTERM/SIGINT.
Use ``make_app()`` to mount it in-process instead.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import datetime
import json
import re
import secrets
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from aiohttp import WSMsgType, web

from tests.fakes.serving import serve_main

HEARTBEAT_ACK_DELAY_SECONDS = 0.05

API = "/api/v10"
# Interaction callbacks and webhooks carry their own token in the path instead of the bot's.
TOKENLESS_PREFIXES = (f"{API}/interactions/", f"{API}/webhooks/")
DISCORD_EPOCH_MS = 1420070400000
HEARTBEAT_INTERVAL_MS = 41250
MAX_CONTENT = 2000
NONCE_WINDOW_SECONDS = 300
INTERACTION_RESPONSE_SECONDS = 3.0
ATTACHMENT_SIZE_LIMIT = 10 * 1024 * 1024
MAX_RECORDED_REQUESTS = 10000
# Kept per session for RESUME; a client further behind than this is told to IDENTIFY again.
SESSION_BACKLOG = 2000

INTENT_GUILD_MESSAGES = 1 << 9
INTENT_DIRECT_MESSAGES = 1 << 12
INTENT_MESSAGE_CONTENT = 1 << 15
FLAG_EPHEMERAL = 1 << 6
FLAG_LOADING = 1 << 7

# @everyone may view channels, send messages, embed links, attach files, read history and react,
# so discord.py's permissions_for(guild.me) says a bot can talk.
EVERYONE_PERMISSIONS = str((1 << 6) | (1 << 10) | (1 << 11) | (1 << 14) | (1 << 15) | (1 << 16))

CHANNEL_TEXT = 0
CHANNEL_DM = 1
MESSAGE_DEFAULT = 0
MESSAGE_REPLY = 19
INTERACTION_COMPONENT = 3

CALLBACK_CHANNEL_MESSAGE = 4
CALLBACK_DEFERRED_CHANNEL_MESSAGE = 5
CALLBACK_DEFERRED_UPDATE = 6
CALLBACK_UPDATE_MESSAGE = 7
CALLBACK_MODAL = 9
CALLBACK_TYPES = {
    CALLBACK_CHANNEL_MESSAGE,
    CALLBACK_DEFERRED_CHANNEL_MESSAGE,
    CALLBACK_DEFERRED_UPDATE,
    CALLBACK_UPDATE_MESSAGE,
    CALLBACK_MODAL,
}

_USER_MENTION = re.compile(r"<@!?([0-9]{15,20})>")


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    # discord.py only parses a body whose Content-Type is exactly "application/json";
    # web.json_response would append "; charset=utf-8".
    return web.Response(body=_dumps(data).encode(), status=status, headers=headers, content_type="application/json")


def _now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat()


def _truthy(value: str | None) -> bool:
    return value is not None and value.lower() in ("1", "true")


class DiscordError(Exception):
    """An API error, rendered in Discord's envelope by the middleware."""

    def __init__(self, status: int, code: int, message: str, errors: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.errors = status, code, message, errors

    def response(self) -> web.Response:
        body: dict[str, Any] = {"message": self.message, "code": self.code}
        if self.errors is not None:
            body["errors"] = self.errors
        return _json(body, status=self.status)


class ControlError(Exception):
    """A malformed control request; a 400 (or the given status) with ``{"error"}``."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _form_error(field_name: str, code: str, message: str) -> DiscordError:
    return DiscordError(400, 50035, "Invalid Form Body", {field_name: {"_errors": [{"code": code, "message": message}]}})


def _unknown_channel() -> DiscordError:
    return DiscordError(404, 10003, "Unknown Channel")


def _unknown_message() -> DiscordError:
    return DiscordError(404, 10008, "Unknown Message")


def _unknown_interaction() -> DiscordError:
    return DiscordError(404, 10062, "Unknown interaction")


def _require(condition: Any, message: str, status: int = 400) -> None:
    if not condition:
        raise ControlError(message, status)


# --------------------------------------------------------------------------- #
# State
# --------------------------------------------------------------------------- #


class Connection:
    """One gateway WebSocket.  Frames go through a queue so they leave in sequence order."""

    def __init__(self, ws: web.WebSocketResponse, request: web.Request) -> None:
        self.ws = ws
        self.transport = request.transport
        self.ws_url = f"ws://{request.host}/gateway/"
        self.outbox: asyncio.Queue[str] = asyncio.Queue()
        self.bot: Bot | None = None
        self.session: Session | None = None

    def send(self, frame: dict[str, Any] | str) -> None:
        self.outbox.put_nowait(frame if isinstance(frame, str) else _dumps(frame))

    async def pump(self) -> None:
        while True:
            text = await self.outbox.get()
            try:
                await self.ws.send_str(text)
            except (ConnectionError, RuntimeError):
                return  # the socket is gone; the session log still holds the frame for a RESUME


@dataclass
class Session:
    id: str
    intents: int
    shard: tuple[int, int] | None
    seq: int = 0
    log: collections.deque[tuple[int, str]] = field(default_factory=lambda: collections.deque(maxlen=SESSION_BACKLOG))
    conn: Connection | None = None

    def dispatch(self, event: str, data: dict[str, Any]) -> None:
        self.seq += 1
        text = _dumps({"op": 0, "s": self.seq, "t": event, "d": data})
        self.log.append((self.seq, text))
        if self.conn is not None:
            self.conn.send(text)

    def sees_guild(self, guild_id: str | None) -> bool:
        if self.shard is None:
            return True
        shard_id, shard_count = self.shard
        # DMs go to shard 0, guilds by Discord's sharding formula.
        return shard_id == (0 if guild_id is None else (int(guild_id) >> 22) % shard_count)


@dataclass
class Bot:
    token: str
    user: dict[str, Any]
    owner: dict[str, Any]
    sessions: dict[str, Session] = field(default_factory=dict)
    identifies: int = 0
    resumes: int = 0
    hold_until: float = 0.0

    @property
    def id(self) -> str:
        return self.user["id"]


@dataclass
class Guild:
    id: str
    name: str
    owner_id: str
    channels: list[str] = field(default_factory=list)
    bots: list[str] = field(default_factory=list)
    joined_at: dict[str, str] = field(default_factory=dict)


@dataclass
class Channel:
    id: str
    name: str | None
    guild_id: str | None
    position: int = 0
    # A DM's two ends, (bot id, user id).
    recipients: tuple[str, str] | None = None


@dataclass
class StoredMessage:
    data: dict[str, Any]
    bot_id: str | None
    via: str
    edits: list[dict[str, Any]] = field(default_factory=list)
    deleted: bool = False


@dataclass
class Interaction:
    id: str
    token: str
    bot_id: str
    message_id: str
    channel_id: str
    guild_id: str | None
    custom_id: str
    user: dict[str, Any]
    deadline: float
    callbacks: list[dict[str, Any]] = field(default_factory=list)
    response_message_id: str | None = None
    followups: list[str] = field(default_factory=list)

    def export(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "bot_id": self.bot_id,
            "message_id": self.message_id,
            "channel_id": self.channel_id,
            "guild_id": self.guild_id,
            "custom_id": self.custom_id,
            "user": self.user,
            "callbacks": self.callbacks,
            "response_message_id": self.response_message_id,
            "followups": self.followups,
        }


def _find_component(components: list[dict[str, Any]], custom_id: str) -> dict[str, Any] | None:
    for component in components:
        if component.get("custom_id") == custom_id:
            return component
        found = _find_component(component.get("components", []), custom_id)
        if found is not None:
            return found
    return None


# --------------------------------------------------------------------------- #
# Server
# --------------------------------------------------------------------------- #


class FakeDiscordServer:
    def __init__(self) -> None:
        self.bots: dict[str, Bot] = {}
        self.bots_by_token: dict[str, Bot] = {}
        self.users: dict[str, dict[str, Any]] = {}
        self.guilds: dict[str, Guild] = {}
        self.channels: dict[str, Channel] = {}
        self.dm_channels: dict[tuple[str, str], str] = {}
        self.messages: dict[str, StoredMessage] = {}
        self.nonces: dict[tuple[str, str, str], tuple[str, float]] = {}
        self.interactions: dict[str, Interaction] = {}
        self.typing: list[dict[str, Any]] = []
        self.requests: collections.deque[dict[str, Any]] = collections.deque(maxlen=MAX_RECORDED_REQUESTS)
        self.ratelimits: dict[str, tuple[int, float]] = {}
        self._last_id = 0

    # ----- helpers --------------------------------------------------------- #

    def _snowflake(self) -> str:
        stamp = (int(time.time() * 1000) - DISCORD_EPOCH_MS) << 22
        self._last_id = max(self._last_id + 1, stamp)
        return str(self._last_id)

    def _remember_user(self, data: dict[str, Any]) -> dict[str, Any]:
        """The full user object for a partial one (``id`` and ``username`` at least), kept for later."""
        user = self.users.setdefault(str(data["id"]), {})
        user.update(
            {
                "id": str(data["id"]),
                "username": data.get("username") or user.get("username") or f"user{data['id']}",
                "discriminator": "0",
                "global_name": data.get("global_name", user.get("global_name")),
                "avatar": None,
                "bot": bool(data.get("bot", user.get("bot", False))),
                "public_flags": 0,
            }
        )
        return user

    def _user(self, user_id: str) -> dict[str, Any]:
        return self.users.get(user_id) or self._remember_user({"id": user_id})

    def _channel_payload(self, channel: Channel, bot_id: str | None = None) -> dict[str, Any]:
        if channel.recipients is not None:
            bot, other = channel.recipients
            recipient = other if bot_id in (None, bot) else bot
            return {
                "id": channel.id,
                "type": CHANNEL_DM,
                "last_message_id": None,
                "flags": 0,
                "recipients": [copy.deepcopy(self._user(recipient))],
            }
        return {
            "id": channel.id,
            "type": CHANNEL_TEXT,
            "guild_id": channel.guild_id,
            "name": channel.name,
            "position": channel.position,
            "permission_overwrites": [],
            "topic": None,
            "nsfw": False,
            "last_message_id": None,
            "rate_limit_per_user": 0,
            "parent_id": None,
            "flags": 0,
        }

    @staticmethod
    def _member_stub(joined_at: str) -> dict[str, Any]:
        return {
            "roles": [],
            "joined_at": joined_at,
            "deaf": False,
            "mute": False,
            "flags": 0,
            "pending": False,
            "nick": None,
            "avatar": None,
        }

    def _guild_payload(self, guild: Guild, bot: Bot, *, startup: bool) -> dict[str, Any]:
        payload = {
            "id": guild.id,
            "name": guild.name,
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "owner_id": guild.owner_id,
            "afk_channel_id": None,
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "roles": [
                {
                    "id": guild.id,
                    "name": "@everyone",
                    "permissions": EVERYONE_PERMISSIONS,
                    "position": 0,
                    "color": 0,
                    "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
                    "hoist": False,
                    "managed": False,
                    "mentionable": False,
                    "icon": None,
                    "unicode_emoji": None,
                    "flags": 0,
                }
            ],
            "emojis": [],
            "stickers": [],
            "features": [],
            "mfa_level": 0,
            "application_id": None,
            "system_channel_id": None,
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "public_updates_channel_id": None,
            "safety_alerts_channel_id": None,
            "preferred_locale": "en-US",
            "premium_tier": 0,
            "nsfw_level": 0,
            "joined_at": guild.joined_at[bot.id],
            "large": False,
            "member_count": len(guild.bots),
            "voice_states": [],
            # Without the members intent Discord sends only the bot's own member.
            "members": [{**self._member_stub(guild.joined_at[bot.id]), "user": copy.deepcopy(bot.user)}],
            "channels": [self._channel_payload(self.channels[cid]) for cid in guild.channels],
            "threads": [],
            "presences": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
            "lazy": True,
        }
        if startup:
            # Guilds announced as unavailable in READY come back with unavailable=false, which makes
            # discord.py fire guild_available rather than guild_join.
            payload["unavailable"] = False
        return payload

    def _viewers(self, channel: Channel) -> list[Bot]:
        if channel.recipients is not None:
            bot = self.bots.get(channel.recipients[0])
            return [bot] if bot else []
        return [self.bots[b] for b in self.guilds[channel.guild_id].bots]

    def _dispatch(self, bot: Bot, guild_id: str | None, event: str, build: Callable[[Session], dict[str, Any] | None]) -> None:
        for session in bot.sessions.values():
            if session.sees_guild(guild_id):
                data = build(session)
                if data is not None:
                    session.dispatch(event, data)

    def _message_for(self, stored: StoredMessage, bot: Bot, session: Session) -> dict[str, Any] | None:
        """A message as a gateway event shows it to one bot session, or None if its intents exclude it."""
        data = copy.deepcopy(stored.data)
        guild_id = data.get("guild_id")
        if not session.intents & (INTENT_GUILD_MESSAGES if guild_id else INTENT_DIRECT_MESSAGES):
            return None
        if guild_id:
            guild = self.guilds[guild_id]
            data["member"] = self._member_stub(guild.joined_at.get(data["author"]["id"], data["timestamp"]))
            for mention in data["mentions"]:
                mention["member"] = self._member_stub(guild.joined_at.get(mention["id"], data["timestamp"]))
            mentioned = any(m["id"] == bot.id for m in data["mentions"])
            if not session.intents & INTENT_MESSAGE_CONTENT and data["author"]["id"] != bot.id and not mentioned:
                data.update(content="", embeds=[], attachments=[], components=[])
        return data

    def _announce_message(self, stored: StoredMessage, event: str) -> None:
        channel = self.channels[stored.data["channel_id"]]
        for bot in self._viewers(channel):
            self._dispatch(bot, channel.guild_id, event, lambda s, b=bot: self._message_for(stored, b, s))

    def _visible_channel(self, bot: Bot, channel_id: str) -> Channel:
        channel = self.channels.get(channel_id)
        if channel is None or (channel.recipients is not None and bot.id not in channel.recipients):
            raise _unknown_channel()
        if channel.guild_id is not None and bot.id not in self.guilds[channel.guild_id].bots:
            raise DiscordError(403, 50001, "Missing Access")
        return channel

    def _mentions(self, content: str, extra: list[str]) -> list[dict[str, Any]]:
        ids = list(dict.fromkeys([*(str(i) for i in extra), *_USER_MENTION.findall(content)]))
        return [copy.deepcopy(self._user(i)) for i in ids]

    def _create_message(
        self,
        channel: Channel,
        author: dict[str, Any],
        body: dict[str, Any],
        *,
        bot_id: str | None,
        via: str,
        attachments: list[dict[str, Any]] = (),
        mention_ids: list[str] = (),
    ) -> StoredMessage:
        content = body.get("content") or ""
        reference = self._resolve_reference(channel, body.get("message_reference"))
        data: dict[str, Any] = {
            "id": self._snowflake(),
            "channel_id": channel.id,
            "author": copy.deepcopy(author),
            "content": content,
            "timestamp": _now_iso(),
            "edited_timestamp": None,
            "tts": bool(body.get("tts", False)),
            "mention_everyone": False,
            "mentions": self._mentions(content, list(mention_ids)),
            "mention_roles": [],
            "attachments": list(attachments),
            "embeds": body.get("embeds") or [],
            "reactions": [],
            "pinned": False,
            "type": MESSAGE_REPLY if reference else MESSAGE_DEFAULT,
            "flags": int(body.get("flags") or 0),
            "components": body.get("components") or [],
        }
        if channel.guild_id is not None:
            data["guild_id"] = channel.guild_id
        if body.get("nonce") is not None:
            data["nonce"] = body["nonce"]
        if reference is not None:
            data["message_reference"] = {"type": 0, "message_id": reference.data["id"], "channel_id": channel.id}
            if channel.guild_id is not None:
                data["message_reference"]["guild_id"] = channel.guild_id
            referenced = copy.deepcopy(reference.data)
            referenced.pop("referenced_message", None)
            data["referenced_message"] = referenced
        stored = StoredMessage(data=data, bot_id=bot_id, via=via)
        self.messages[data["id"]] = stored
        return stored

    def _resolve_reference(self, channel: Channel, reference: dict[str, Any] | None) -> StoredMessage | None:
        if not reference or reference.get("message_id") is None:
            return None
        target = self.messages.get(str(reference["message_id"]))
        if target is not None and not target.deleted and target.data["channel_id"] == channel.id:
            return target
        if reference.get("fail_if_not_exists", True):
            raise _form_error("message_reference", "MESSAGE_REFERENCE_UNKNOWN_MESSAGE", "Unknown message")
        return None

    @staticmethod
    def _validate_content(body: dict[str, Any], *, creating: bool, has_files: bool = False) -> None:
        content = body.get("content")
        if content is not None and len(content) > MAX_CONTENT:
            raise _form_error("content", "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_CONTENT} or fewer in length.")
        if creating and not (
            content or body.get("embeds") or body.get("components") or body.get("sticker_ids") or body.get("poll") or has_files
        ):
            raise DiscordError(400, 50006, "Cannot send an empty message")

    def _edit(self, stored: StoredMessage, body: dict[str, Any]) -> None:
        self._validate_content(body, creating=False)
        data = stored.data
        for key in ("content", "embeds", "components"):
            if key in body:
                data[key] = body[key] if body[key] is not None else ("" if key == "content" else [])
        if "flags" in body and body["flags"] is not None:
            # Only the suppress-embeds flag may be changed by an edit; the rest is kept.
            data["flags"] = (data["flags"] & ~4) | (int(body["flags"]) & 4)
        data["flags"] &= ~FLAG_LOADING
        if "content" in body:
            data["mentions"] = self._mentions(data["content"], [])
        data["edited_timestamp"] = _now_iso()
        stored.edits.append({k: copy.deepcopy(data[k]) for k in ("content", "embeds", "components", "edited_timestamp")})

    def _announce_edit(self, stored: StoredMessage) -> None:
        if not stored.data["flags"] & FLAG_EPHEMERAL:
            self._announce_message(stored, "MESSAGE_UPDATE")

    def _delete(self, stored: StoredMessage) -> None:
        stored.deleted = True
        channel = self.channels[stored.data["channel_id"]]
        if stored.data["flags"] & FLAG_EPHEMERAL:
            return
        event = {"id": stored.data["id"], "channel_id": channel.id}
        if channel.guild_id is not None:
            event["guild_id"] = channel.guild_id
        for bot in self._viewers(channel):
            self._dispatch(
                bot,
                channel.guild_id,
                "MESSAGE_DELETE",
                lambda s, e=event: e if s.intents & (INTENT_GUILD_MESSAGES | INTENT_DIRECT_MESSAGES) else None,
            )

    @staticmethod
    async def _read_body(request: web.Request) -> tuple[dict[str, Any], list[tuple[str, int, str]]]:
        """The JSON payload (plain or multipart ``payload_json``) and any uploaded files."""
        try:
            if request.content_type.startswith("multipart/"):
                form = await request.post()
                payload = json.loads(form.get("payload_json") or "{}")
                files = [(f.filename, len(f.file.read()), f.content_type) for f in form.values() if isinstance(f, web.FileField)]
            else:
                raw = await request.read()
                payload, files = (json.loads(raw) if raw else {}), []
        except ValueError:
            raise DiscordError(400, 50109, "The request body contains invalid JSON.") from None
        if not isinstance(payload, dict):
            raise DiscordError(400, 50109, "The request body contains invalid JSON.")
        return payload, files

    def _attachments(self, request: web.Request, channel_id: str, files: list[tuple[str, int, str]]) -> list[dict[str, Any]]:
        out = []
        for filename, size, content_type in files:
            attachment_id = self._snowflake()
            url = f"http://{request.host}/attachments/{channel_id}/{attachment_id}/{filename}"
            out.append(
                {
                    "id": attachment_id,
                    "filename": filename,
                    "size": size,
                    "url": url,
                    "proxy_url": url,
                    "content_type": content_type,
                }
            )
        return out

    # ----- middleware ------------------------------------------------------ #

    @web.middleware
    async def middleware(self, request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
        if request.path.startswith("/_fake/"):
            try:
                return await handler(request)
            except ControlError as exc:
                return _json({"error": str(exc)}, status=exc.status)
        if not request.path.startswith(API + "/"):
            return await handler(request)
        try:
            if not request.path.startswith(TOKENLESS_PREFIXES):
                request["bot"] = self._authenticate(request)
            response = await handler(request)
        except DiscordError as exc:
            response = exc.response()
        bot = request.get("bot")
        self.requests.append(
            {
                "method": request.method,
                "path": request.path,
                "query": request.query_string,
                "bot_id": bot.id if bot else None,
                "status": response.status,
                "at": time.time(),
            }
        )
        return response

    def _authenticate(self, request: web.Request) -> Bot:
        header = request.headers.get("Authorization", "")
        bot = self.bots_by_token.get(header[4:]) if header.startswith("Bot ") else None
        if bot is None:
            raise DiscordError(401, 0, "401: Unauthorized")
        return bot

    async def not_found(self, request: web.Request) -> web.Response:
        print(f"fake discord: no route for {request.method} {request.path_qs}", file=sys.stderr, flush=True)
        return DiscordError(404, 0, "404: Not Found").response()

    # ----- REST: users, application, gateway ------------------------------- #

    async def get_me(self, request: web.Request) -> web.Response:
        bot = request["bot"]
        return _json({**bot.user, "verified": True, "mfa_enabled": False, "flags": 0, "email": None, "locale": "en-US"})

    async def get_user(self, request: web.Request) -> web.Response:
        user = self.users.get(request.match_info["user_id"])
        if user is None:
            raise DiscordError(404, 10013, "Unknown User")
        return _json(user)

    async def get_application(self, request: web.Request) -> web.Response:
        bot = request["bot"]
        return _json(
            {
                "id": bot.id,
                "name": bot.user["username"],
                "icon": None,
                "description": "",
                "bot_public": True,
                "bot_require_code_grant": False,
                "owner": bot.owner,
                "verify_key": secrets.token_hex(32),
                "flags": 0,
                "bot": bot.user,
                "team": None,
                "summary": "",
                "interactions_endpoint_url": None,
            }
        )

    async def get_gateway(self, request: web.Request) -> web.Response:
        url = f"ws://{request.host}/gateway/"
        if request.path.endswith("/bot"):
            limit = {"total": 1000, "remaining": 999, "reset_after": 14400000, "max_concurrency": 1}
            return _json({"url": url, "shards": 1, "session_start_limit": limit})
        return _json({"url": url})

    # ----- REST: channels and messages ------------------------------------ #

    async def get_channel(self, request: web.Request) -> web.Response:
        bot = request["bot"]
        return _json(self._channel_payload(self._visible_channel(bot, request.match_info["channel_id"]), bot.id))

    async def open_dm(self, request: web.Request) -> web.Response:
        bot = request["bot"]
        body, _ = await self._read_body(request)
        recipient = body.get("recipient_id")
        if recipient is None:
            raise _form_error("recipient_id", "BASE_TYPE_REQUIRED", "This field is required")
        return _json(self._channel_payload(self._dm_channel(bot.id, str(recipient)), bot.id))

    def _dm_channel(self, bot_id: str, user_id: str) -> Channel:
        channel_id = self.dm_channels.get((bot_id, user_id))
        if channel_id is None:
            self._user(user_id)
            channel_id = self.dm_channels[(bot_id, user_id)] = self._snowflake()
            self.channels[channel_id] = Channel(id=channel_id, name=None, guild_id=None, recipients=(bot_id, user_id))
        return self.channels[channel_id]

    def _ratelimited(self, channel_id: str) -> web.Response | None:
        count, retry_after = self.ratelimits.get(channel_id, (0, 0.0))
        if count <= 0:
            return None
        self.ratelimits[channel_id] = (count - 1, retry_after)
        headers = {
            "Retry-After": str(max(1, round(retry_after))),
            "X-RateLimit-Limit": "5",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": f"{time.time() + retry_after:.3f}",
            "X-RateLimit-Reset-After": f"{retry_after:.3f}",
            "X-RateLimit-Bucket": f"fake-messages-{channel_id}",
            "X-RateLimit-Scope": "user",
            # discord.py takes a 429 without a Via header for a Cloudflare ban and gives up instead of retrying.
            "Via": "1.1 google",
        }
        body = {"message": "You are being rate limited.", "retry_after": retry_after, "global": False}
        return _json(body, status=429, headers=headers)

    async def post_message(self, request: web.Request) -> web.Response:
        bot = request["bot"]
        channel = self._visible_channel(bot, request.match_info["channel_id"])
        limited = self._ratelimited(channel.id)
        if limited is not None:
            return limited
        body, files = await self._read_body(request)
        self._validate_content(body, creating=True, has_files=bool(files))
        nonce_key = None
        if body.get("nonce") is not None and body.get("enforce_nonce"):
            nonce_key = (channel.id, bot.id, str(body["nonce"]))
            earlier = self.nonces.get(nonce_key)
            if earlier is not None and time.monotonic() - earlier[1] < NONCE_WINDOW_SECONDS:
                return _json(self.messages[earlier[0]].data)
        stored = self._create_message(
            channel, bot.user, body, bot_id=bot.id, via="rest", attachments=self._attachments(request, channel.id, files)
        )
        if nonce_key is not None:
            self.nonces[nonce_key] = (stored.data["id"], time.monotonic())
        self._announce_message(stored, "MESSAGE_CREATE")
        return _json(stored.data)

    def _channel_message(self, bot: Bot, request: web.Request) -> StoredMessage:
        channel = self._visible_channel(bot, request.match_info["channel_id"])
        stored = self.messages.get(request.match_info["message_id"])
        if stored is None or stored.deleted or stored.data["channel_id"] != channel.id or stored.data["flags"] & FLAG_EPHEMERAL:
            raise _unknown_message()
        return stored

    async def get_message(self, request: web.Request) -> web.Response:
        return _json(self._channel_message(request["bot"], request).data)

    async def edit_message(self, request: web.Request) -> web.Response:
        bot = request["bot"]
        stored = self._channel_message(bot, request)
        if stored.data["author"]["id"] != bot.id:
            raise DiscordError(403, 50005, "Cannot edit a message authored by another user")
        body, _ = await self._read_body(request)
        self._edit(stored, body)
        self._announce_edit(stored)
        return _json(stored.data)

    async def delete_message(self, request: web.Request) -> web.Response:
        bot = request["bot"]
        stored = self._channel_message(bot, request)
        if stored.data["author"]["id"] != bot.id:
            raise DiscordError(403, 50013, "Missing Permissions")
        self._delete(stored)
        return web.Response(status=204)

    async def post_typing(self, request: web.Request) -> web.Response:
        bot = request["bot"]
        channel = self._visible_channel(bot, request.match_info["channel_id"])
        self.typing.append({"channel_id": channel.id, "bot_id": bot.id, "at": time.time()})
        return web.Response(status=204)

    # ----- REST: interactions --------------------------------------------- #

    def _interaction(self, request: web.Request, key: str) -> Interaction:
        """The interaction the path names, by its id (callbacks) or by application id (webhooks)."""
        token = request.match_info["token"]
        interaction = next((i for i in self.interactions.values() if i.token == token), None)
        if (
            interaction is None
            or (key == "interaction_id" and interaction.id != request.match_info[key])
            or (key == "application_id" and interaction.bot_id != request.match_info[key])
        ):
            raise _unknown_interaction() if key == "interaction_id" else DiscordError(404, 10015, "Unknown Webhook")
        request["bot"] = self.bots[interaction.bot_id]
        return interaction

    async def interaction_callback(self, request: web.Request) -> web.Response:
        interaction = self._interaction(request, "interaction_id")
        if interaction.callbacks:
            raise DiscordError(400, 40060, "Interaction has already been acknowledged.")
        if asyncio.get_running_loop().time() > interaction.deadline:
            raise _unknown_interaction()
        body, files = await self._read_body(request)
        kind, data = body.get("type"), body.get("data") or {}
        if kind not in CALLBACK_TYPES:
            raise _form_error("type", "BASE_TYPE_CHOICES", f"Value must be one of {sorted(CALLBACK_TYPES)}.")
        bot = self.bots[interaction.bot_id]
        channel = self.channels[interaction.channel_id]
        message: StoredMessage | None = None
        if kind in (CALLBACK_CHANNEL_MESSAGE, CALLBACK_DEFERRED_CHANNEL_MESSAGE):
            if kind == CALLBACK_CHANNEL_MESSAGE:
                self._validate_content(data, creating=True, has_files=bool(files))
            else:
                # A deferred answer is Discord's "<bot> is thinking..." placeholder until edited.
                data = {**data, "flags": FLAG_LOADING | (int(data.get("flags") or 0) & FLAG_EPHEMERAL)}
            message = self._create_message(
                channel,
                bot.user,
                data,
                bot_id=bot.id,
                via="interaction",
                attachments=self._attachments(request, channel.id, files),
            )
            message.data["interaction_metadata"] = self._interaction_metadata(interaction)
            if not message.data["flags"] & FLAG_EPHEMERAL:
                self._announce_message(message, "MESSAGE_CREATE")
        elif kind in (CALLBACK_UPDATE_MESSAGE, CALLBACK_DEFERRED_UPDATE):
            message = self.messages[interaction.message_id]
            if kind == CALLBACK_UPDATE_MESSAGE:
                self._edit(message, data)
                self._announce_edit(message)
        interaction.callbacks.append({"type": kind, "data": body.get("data") or {}, "at": time.time()})
        interaction.response_message_id = message.data["id"] if message else None
        if not _truthy(request.query.get("with_response")):
            return web.Response(status=204)
        # discord.py asks for with_response and builds InteractionCallbackResponse from this body.
        resource: dict[str, Any] = {"type": kind}
        if message is not None and kind != CALLBACK_DEFERRED_UPDATE:
            resource["message"] = message.data
        return _json(
            {
                "interaction": {
                    "id": interaction.id,
                    "type": INTERACTION_COMPONENT,
                    "response_message_id": interaction.response_message_id,
                    "response_message_loading": kind == CALLBACK_DEFERRED_CHANNEL_MESSAGE,
                    "response_message_ephemeral": bool(message and message.data["flags"] & FLAG_EPHEMERAL),
                },
                "resource": resource,
            }
        )

    @staticmethod
    def _interaction_metadata(interaction: Interaction) -> dict[str, Any]:
        return {
            "id": interaction.id,
            "type": INTERACTION_COMPONENT,
            "user": interaction.user,
            "authorizing_integration_owners": {},
            "interacted_message_id": interaction.message_id,
        }

    def _webhook_message(self, interaction: Interaction, message_id: str) -> StoredMessage:
        if message_id == "@original":
            if interaction.response_message_id is None:
                raise _unknown_message()
            message_id = interaction.response_message_id
        elif message_id not in interaction.followups:
            raise _unknown_message()
        stored = self.messages[message_id]
        if stored.deleted:
            raise _unknown_message()
        return stored

    async def followup(self, request: web.Request) -> web.Response:
        interaction = self._interaction(request, "application_id")
        if not interaction.callbacks:
            raise DiscordError(404, 10015, "Unknown Webhook")
        body, files = await self._read_body(request)
        self._validate_content(body, creating=True, has_files=bool(files))
        bot = self.bots[interaction.bot_id]
        channel = self.channels[interaction.channel_id]
        stored = self._create_message(
            channel, bot.user, body, bot_id=bot.id, via="followup", attachments=self._attachments(request, channel.id, files)
        )
        stored.data["interaction_metadata"] = {
            **self._interaction_metadata(interaction),
            "original_response_message_id": interaction.response_message_id,
        }
        interaction.followups.append(stored.data["id"])
        if not stored.data["flags"] & FLAG_EPHEMERAL:
            self._announce_message(stored, "MESSAGE_CREATE")
        if _truthy(request.query.get("wait")):
            return _json(stored.data)
        return web.Response(status=204)

    async def webhook_message(self, request: web.Request) -> web.Response:
        interaction = self._interaction(request, "application_id")
        stored = self._webhook_message(interaction, request.match_info["message_id"])
        if request.method == "PATCH":
            body, _ = await self._read_body(request)
            self._edit(stored, body)
            self._announce_edit(stored)
        elif request.method == "DELETE":
            self._delete(stored)
            return web.Response(status=204)
        return _json(stored.data)

    # ----- gateway --------------------------------------------------------- #

    async def gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        conn = Connection(ws, request)
        pump = asyncio.create_task(conn.pump())
        conn.send({"op": 10, "d": {"heartbeat_interval": HEARTBEAT_INTERVAL_MS, "_trace": ["fake-discord"]}})
        try:
            async for msg in ws:
                if msg.type is not WSMsgType.TEXT:
                    continue
                try:
                    frame = json.loads(msg.data)
                    op, data = frame["op"], frame.get("d")
                except (ValueError, KeyError, TypeError):
                    await ws.close(code=4002, message=b"Error while decoding payload.")
                    break
                await self._gateway_op(conn, op, data)
        finally:
            pump.cancel()
            session = conn.session
            if session is not None and session.conn is conn:
                session.conn = None
                # A clean close by the client ends its session; anything else leaves it resumable.
                if ws.close_code in (1000, 1001):
                    conn.bot.sessions.pop(session.id, None)
        return ws

    async def _gateway_op(self, conn: Connection, op: int, data: Any) -> None:
        if op == 1:
            # Discord's ack comes a network round trip later. An instant one can overtake discord.py's
            # own note that it sent the heartbeat, which it then logs as a heartbeat 41 s late.
            asyncio.get_running_loop().call_later(HEARTBEAT_ACK_DELAY_SECONDS, conn.send, {"op": 11})
        elif op in (2, 6):
            if conn.bot is not None:
                await conn.ws.close(code=4005, message=b"Already authenticated.")
                return
            bot = self.bots_by_token.get((data or {}).get("token") or "")
            if bot is None:
                await conn.ws.close(code=4004, message=b"Authentication failed.")
                return
            delay = bot.hold_until - asyncio.get_running_loop().time()
            if delay > 0:
                await asyncio.sleep(delay)
            if op == 2:
                self._identify(conn, bot, data)
            else:
                self._resume(conn, bot, data)
        elif conn.bot is None:
            await conn.ws.close(code=4003, message=b"Not authenticated.")
        elif op not in (3, 4, 8):
            # Presence, voice state and member requests are accepted and ignored; nothing else exists.
            await conn.ws.close(code=4001, message=b"Unknown opcode.")

    def _identify(self, conn: Connection, bot: Bot, data: dict[str, Any]) -> None:
        shard = data.get("shard")
        session = Session(id=secrets.token_hex(16), intents=int(data.get("intents") or 0), shard=tuple(shard) if shard else None)
        bot.sessions[session.id] = session
        bot.identifies += 1
        conn.bot, conn.session, session.conn = bot, session, conn
        guilds = [g for g in self.guilds.values() if bot.id in g.bots and session.sees_guild(g.id)]
        ready = {
            "v": 10,
            "user": {**bot.user, "verified": True, "mfa_enabled": False, "flags": 0, "email": None},
            "guilds": [{"id": g.id, "unavailable": True} for g in guilds],
            "session_id": session.id,
            "session_type": "normal",
            "resume_gateway_url": conn.ws_url,
            "application": {"id": bot.id, "flags": 0},
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "guild_join_requests": [],
            "geo_ordered_rtc_regions": [],
            "user_settings": {},
            "auth": {},
            "_trace": ["fake-discord"],
        }
        if session.shard is not None:
            ready["shard"] = list(session.shard)
        session.dispatch("READY", ready)
        for guild in guilds:
            session.dispatch("GUILD_CREATE", self._guild_payload(guild, bot, startup=True))

    def _resume(self, conn: Connection, bot: Bot, data: dict[str, Any]) -> None:
        session = bot.sessions.get(str(data.get("session_id")))
        seq = data.get("seq") or 0
        if session is None or (session.log and session.log[0][0] > seq + 1):
            conn.send({"op": 9, "d": False})
            return
        if session.conn is not None:
            # A second RESUME of a live session replaces the old connection, as on Discord.
            asyncio.create_task(session.conn.ws.close(code=4000))
        bot.resumes += 1
        conn.bot, conn.session, session.conn = bot, session, conn
        for frame_seq, text in session.log:
            if frame_seq > seq:
                conn.send(text)
        conn.send({"op": 0, "s": None, "t": "RESUMED", "d": {"_trace": ["fake-discord"]}})

    # ----- control --------------------------------------------------------- #

    async def health(self, request: web.Request) -> web.Response:
        return _json({"ok": True})

    @staticmethod
    async def _control_body(request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError:
            raise ControlError("body must be JSON") from None
        _require(isinstance(body, dict), "body must be a JSON object")
        return body

    async def add_bot(self, request: web.Request) -> web.Response:
        body = await self._control_body(request)
        token = body.get("token")
        _require(isinstance(token, str) and token, "token is required")
        _require(token not in self.bots_by_token, "token already registered", 409)
        bot_id = str(body.get("id") or self._snowflake())
        _require(bot_id not in self.bots, "bot id already registered", 409)
        username = body.get("username") or f"bot{bot_id[-4:]}"
        user = self._remember_user({"id": bot_id, "username": username, "global_name": username, "bot": True})
        owner = copy.deepcopy(self._remember_user({"id": self._snowflake(), "username": f"{username}-owner"}))
        bot = Bot(token=token, user=copy.deepcopy(user), owner=owner)
        self.bots[bot_id] = self.bots_by_token[token] = bot
        return _json(bot.user)

    async def add_guild(self, request: web.Request) -> web.Response:
        body = await self._control_body(request)
        guild_id = str(body.get("id") or self._snowflake())
        bot_ids = [str(b) for b in body.get("bots", [])]
        for bot_id in bot_ids:
            _require(bot_id in self.bots, f"unknown bot {bot_id}")
        guild = self.guilds.get(guild_id)
        if guild is None:
            _require(body.get("name"), "name is required")
            owner = self._remember_user({"id": self._snowflake(), "username": f"{body['name']}-owner"})
            guild = self.guilds[guild_id] = Guild(id=guild_id, name=body["name"], owner_id=owner["id"])
        new_channels = []
        for spec in body.get("channels", []):
            channel_id = str(spec.get("id") or self._snowflake())
            _require(channel_id not in self.channels, f"channel {channel_id} already exists")
            _require(spec.get("name"), "every channel needs a name")
            self.channels[channel_id] = Channel(id=channel_id, name=spec["name"], guild_id=guild.id, position=len(guild.channels))
            guild.channels.append(channel_id)
            new_channels.append(self.channels[channel_id])
        for channel in new_channels:
            payload = self._channel_payload(channel)
            for bot_id in guild.bots:
                self._dispatch(self.bots[bot_id], guild.id, "CHANNEL_CREATE", lambda s, p=payload: copy.deepcopy(p))
        for bot_id in bot_ids:
            if bot_id in guild.bots:
                continue
            guild.bots.append(bot_id)
            guild.joined_at[bot_id] = _now_iso()
            bot = self.bots[bot_id]
            self._dispatch(bot, guild.id, "GUILD_CREATE", lambda s, b=bot: self._guild_payload(guild, b, startup=False))
        return _json(
            {
                "id": guild.id,
                "name": guild.name,
                "channels": [{"id": c, "name": self.channels[c].name} for c in guild.channels],
                "bots": guild.bots,
            }
        )

    async def inject_message(self, request: web.Request) -> web.Response:
        body = await self._control_body(request)
        author_spec = body.get("author") or {}
        _require(author_spec.get("id"), "author.id is required")
        author = self._remember_user(author_spec)
        if body.get("dm"):
            dm = body["dm"]
            bot_id, user_id = str(dm.get("bot_id")), str(dm.get("user_id") or author["id"])
            _require(bot_id in self.bots, f"unknown bot {bot_id}")
            _require(user_id == author["id"], "a DM's author must be its user")
            channel = self._dm_channel(bot_id, user_id)
        else:
            channel = self.channels.get(str(body.get("channel_id")))
            _require(channel is not None, "unknown channel_id", 404)
        if channel.guild_id is not None:
            self.guilds[channel.guild_id].joined_at.setdefault(author["id"], _now_iso())
        message_body = {"content": body.get("content") or "", "embeds": body.get("embeds") or []}
        if body.get("reply_to"):
            message_body["message_reference"] = {"message_id": str(body["reply_to"])}
        try:
            stored = self._create_message(
                channel, author, message_body, bot_id=None, via="user", mention_ids=[str(m) for m in body.get("mentions", [])]
            )
        except DiscordError as exc:
            raise ControlError(f"{exc.message}: {exc.errors}") from None
        self._announce_message(stored, "MESSAGE_CREATE")
        return _json(stored.data)

    async def list_sent(self, request: web.Request) -> web.Response:
        channel_id, bot_id = request.query.get("channel_id"), request.query.get("bot_id")
        return _json(
            [
                {**m.data, "edits": m.edits, "deleted": m.deleted, "via": m.via}
                for m in self.messages.values()
                if m.bot_id is not None
                and (channel_id is None or m.data["channel_id"] == channel_id)
                and (bot_id is None or m.bot_id == bot_id)
            ]
        )

    async def list_typing(self, request: web.Request) -> web.Response:
        channel_id, bot_id = request.query.get("channel_id"), request.query.get("bot_id")
        return _json(
            [
                t
                for t in self.typing
                if (channel_id is None or t["channel_id"] == channel_id) and (bot_id is None or t["bot_id"] == bot_id)
            ]
        )

    async def list_requests(self, request: web.Request) -> web.Response:
        bot_id = request.query.get("bot_id")
        return _json([r for r in self.requests if bot_id is None or r["bot_id"] == bot_id])

    async def arm_ratelimit(self, request: web.Request) -> web.Response:
        body = await self._control_body(request)
        channel_id = str(body.get("channel_id"))
        _require(channel_id in self.channels, "unknown channel_id", 404)
        count, retry_after = int(body.get("count", 1)), float(body.get("retry_after", 1.0))
        self.ratelimits[channel_id] = (count, retry_after)
        return _json({"channel_id": channel_id, "count": count, "retry_after": retry_after})

    async def drop(self, request: web.Request) -> web.Response:
        body = await self._control_body(request)
        if body.get("bot_id") is not None:
            _require(str(body["bot_id"]) in self.bots, "unknown bot_id", 404)
            bots = [self.bots[str(body["bot_id"])]]
        else:
            bots = list(self.bots.values())
        code, abrupt = int(body.get("code", 4000)), bool(body.get("abrupt", False))
        hold_until = asyncio.get_running_loop().time() + float(body.get("reconnect_delay", 0))
        dropped = []
        for bot in bots:
            bot.hold_until = hold_until
            for session in bot.sessions.values():
                conn, session.conn = session.conn, None
                if conn is not None:
                    dropped.append(conn)
        for conn in dropped:
            if abrupt:
                conn.transport.close()
        if not abrupt:
            await asyncio.gather(*(c.ws.close(code=code, message=b"Dropped by the fake.") for c in dropped))
        return _json({"dropped": len(dropped)})

    async def click(self, request: web.Request) -> web.Response:
        body = await self._control_body(request)
        stored = self.messages.get(str(body.get("message_id")))
        _require(stored is not None and stored.bot_id is not None and not stored.deleted, "no such bot message", 404)
        component = _find_component(stored.data["components"], str(body.get("custom_id")))
        _require(component is not None, "the message has no component with that custom_id")
        _require(not component.get("disabled"), "that component is disabled")
        _require((body.get("user") or {}).get("id"), "user.id is required")
        user = self._remember_user(body["user"])
        bot = self.bots[stored.bot_id]
        channel = self.channels[stored.data["channel_id"]]
        interaction = Interaction(
            id=self._snowflake(),
            token="aW50ZXJhY3Rpb24" + secrets.token_urlsafe(48),
            bot_id=bot.id,
            message_id=stored.data["id"],
            channel_id=channel.id,
            guild_id=channel.guild_id,
            custom_id=component["custom_id"],
            user=copy.deepcopy(user),
            deadline=asyncio.get_running_loop().time() + float(body.get("respond_within", INTERACTION_RESPONSE_SECONDS)),
        )
        self.interactions[interaction.id] = interaction
        data: dict[str, Any] = {"component_type": component["type"], "custom_id": component["custom_id"]}
        if "values" in body:
            data["values"] = body["values"]
        payload = {
            "id": interaction.id,
            "application_id": bot.id,
            "type": INTERACTION_COMPONENT,
            "data": data,
            "channel": self._channel_payload(channel, bot.id),
            "channel_id": channel.id,
            "token": interaction.token,
            "version": 1,
            "message": stored.data,
            "app_permissions": EVERYONE_PERMISSIONS,
            "locale": "en-US",
            "entitlements": [],
            "authorizing_integration_owners": {},
            "attachment_size_limit": ATTACHMENT_SIZE_LIMIT,
        }
        if channel.guild_id is not None:
            guild = self.guilds[channel.guild_id]
            guild.joined_at.setdefault(user["id"], _now_iso())
            member = {**self._member_stub(guild.joined_at[user["id"]]), "user": user, "permissions": EVERYONE_PERMISSIONS}
            payload.update(
                guild_id=guild.id,
                guild_locale="en-US",
                member=member,
                context=0,
                guild={"id": guild.id, "locale": "en-US", "features": []},
            )
        else:
            payload.update(user=user, context=1)
        self._dispatch(bot, channel.guild_id, "INTERACTION_CREATE", lambda s: copy.deepcopy(payload))
        return _json({"id": interaction.id, "token": interaction.token})

    async def list_interactions(self, request: web.Request) -> web.Response:
        bot_id = request.query.get("bot_id")
        return _json([i.export() for i in self.interactions.values() if bot_id is None or i.bot_id == bot_id])

    async def connections(self, request: web.Request) -> web.Response:
        return _json(
            {
                bot.id: {
                    "connected": any(s.conn is not None for s in bot.sessions.values()),
                    "sessions": len(bot.sessions),
                    "identifies": bot.identifies,
                    "resumes": bot.resumes,
                }
                for bot in self.bots.values()
            }
        )


def make_app() -> web.Application:
    server = FakeDiscordServer()
    app = web.Application(middlewares=[server.middleware])
    r = app.router
    r.add_get("/gateway", server.gateway)
    r.add_get("/gateway/", server.gateway)
    r.add_get(f"{API}/users/@me", server.get_me)
    r.add_post(f"{API}/users/@me/channels", server.open_dm)
    r.add_get(f"{API}/users/{{user_id}}", server.get_user)
    r.add_get(f"{API}/oauth2/applications/@me", server.get_application)
    r.add_get(f"{API}/gateway", server.get_gateway)
    r.add_get(f"{API}/gateway/bot", server.get_gateway)
    r.add_get(f"{API}/channels/{{channel_id}}", server.get_channel)
    r.add_post(f"{API}/channels/{{channel_id}}/messages", server.post_message)
    r.add_get(f"{API}/channels/{{channel_id}}/messages/{{message_id}}", server.get_message)
    r.add_patch(f"{API}/channels/{{channel_id}}/messages/{{message_id}}", server.edit_message)
    r.add_delete(f"{API}/channels/{{channel_id}}/messages/{{message_id}}", server.delete_message)
    r.add_post(f"{API}/channels/{{channel_id}}/typing", server.post_typing)
    r.add_post(f"{API}/interactions/{{interaction_id}}/{{token}}/callback", server.interaction_callback)
    r.add_post(f"{API}/webhooks/{{application_id}}/{{token}}", server.followup)
    r.add_route("*", f"{API}/webhooks/{{application_id}}/{{token}}/messages/{{message_id}}", server.webhook_message)
    r.add_get("/_fake/health", server.health)
    r.add_post("/_fake/bots", server.add_bot)
    r.add_post("/_fake/guilds", server.add_guild)
    r.add_post("/_fake/messages", server.inject_message)
    r.add_get("/_fake/sent", server.list_sent)
    r.add_get("/_fake/typing", server.list_typing)
    r.add_get("/_fake/requests", server.list_requests)
    r.add_post("/_fake/ratelimit", server.arm_ratelimit)
    r.add_post("/_fake/drop", server.drop)
    r.add_post("/_fake/click", server.click)
    r.add_get("/_fake/interactions", server.list_interactions)
    r.add_get("/_fake/connections", server.connections)
    # Registered last so it only catches what nothing else matched.
    r.add_route("*", "/{tail:.*}", server.not_found)
    return app


def main() -> None:
    serve_main(make_app, "Fake Discord REST API and gateway")


if __name__ == "__main__":
    main()
