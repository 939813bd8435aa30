"""Redis pub/sub messages handed to the event loop's readers, over one connection per process.

A web process follows hundreds of runs at once. Asking Redis for each run's new events (a blocking XREAD
per reader, per event) cost a round trip and redis-py's client machinery per event: a third of the web
process's CPU. Instead the writer publishes each event as it appends it (sessions/events.py), and the hub
here holds one subscriber connection for the whole process, reading with an asyncio protocol and hiredis:
a pushed message is parsed and put on its readers' queues without a command or a task of its own.

Pub/sub delivers at most once: what is published while the connection is down, or before a subscription
is confirmed, is not seen here. Readers therefore subscribe first, then read what the stream already holds,
and read the stream again whenever the hub tells them it reconnected (RESYNC) or a message is missing; the
Redis stream, not the channel, is the record.
"""

import asyncio
import logging
import ssl
from urllib.parse import urlparse

import hiredis
from django.conf import settings
from redis.connection import parse_url

from beamclaw_project.infra.redis import per_event_loop

logger = logging.getLogger(__name__)

# Put on a reader's queue when the hub lost its connection, and again once the channel is subscribed anew:
# read the stream for what was published meanwhile.
RESYNC = object()

CONNECT_TIMEOUT_SECONDS = 5
# An idle connection is pinged this often; one that has not answered the previous ping is dropped.
PING_SECONDS = 15


def _command(*parts: bytes) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(out)


class _Protocol(asyncio.Protocol):
    def __init__(self, hub: "ChannelHub"):
        self.hub = hub
        self.parser = hiredis.Reader()
        self.transport: asyncio.Transport | None = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.parser.feed(data)
        try:
            while (reply := self.parser.gets()) is not False:
                self.hub._dispatch(self, reply)
        except hiredis.ProtocolError as exc:
            logger.warning("redis pub/sub: %s; reconnecting", exc)
            self.transport.abort()

    def connection_lost(self, exc) -> None:
        if not self.closed.done():
            self.closed.set_result(exc)


class ChannelHub:
    """Subscriptions of one event loop's readers to Redis channels, on one connection."""

    def __init__(self, url: str):
        self._url = url
        self._queues: dict[bytes, set[asyncio.Queue]] = {}
        self._subscribed: set[bytes] = set()  # confirmed by Redis on the current connection
        self._resubscribing: set[bytes] = set()  # subscribed again after a reconnection, not yet confirmed
        self._waiting: dict[bytes, list[asyncio.Future]] = {}
        self._protocol: _Protocol | None = None
        self._connected: asyncio.Future | None = None
        self._task: asyncio.Task | None = None
        self._awaiting_pong = False

    async def subscribe(self, channel: bytes) -> asyncio.Queue:
        """A queue that receives the channel's messages (bytes) from the moment this returns, and RESYNC
        after a reconnection. Raises ConnectionError when Redis cannot be reached."""
        queue: asyncio.Queue = asyncio.Queue()
        self._queues.setdefault(channel, set()).add(queue)
        try:
            if channel not in self._subscribed:
                await self._ensure_connected()
                confirmed = asyncio.get_running_loop().create_future()
                waiting = self._waiting.setdefault(channel, [])
                waiting.append(confirmed)
                if len(waiting) == 1:
                    self._send(b"SUBSCRIBE", channel)
                await confirmed
        except BaseException:
            self.unsubscribe(channel, queue)
            raise
        return queue

    def unsubscribe(self, channel: bytes, queue: asyncio.Queue) -> None:
        queues = self._queues.get(channel)
        if queues is None:
            return
        queues.discard(queue)
        if not queues:
            del self._queues[channel]
            if channel in self._subscribed:
                self._subscribed.discard(channel)
                self._send(b"UNSUBSCRIBE", channel)

    # --- the connection ------------------------------------------------------------------------------

    def _send(self, *parts: bytes) -> None:
        # Written at once, in call order: an UNSUBSCRIBE never overtakes a later SUBSCRIBE of the channel.
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.write(_command(*parts))

    async def _ensure_connected(self) -> None:
        if self._task is None or self._task.done():
            self._connected = asyncio.get_running_loop().create_future()
            self._task = asyncio.create_task(self._maintain())
        if not self._connected.done():
            await asyncio.shield(self._connected)
        elif self._connected.exception() is not None:
            raise ConnectionError("Redis pub/sub is not connected; retrying")

    async def _open(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        options = parse_url(self._url)
        protocol = _Protocol(self)
        if "path" in options:
            connect = loop.create_unix_connection(lambda: protocol, options["path"])
        else:
            secure = urlparse(self._url).scheme == "rediss"
            connect = loop.create_connection(lambda: protocol, options.get("host", "127.0.0.1"), options.get("port", 6379),
                                             ssl=ssl.create_default_context() if secure else None)
        await asyncio.wait_for(connect, CONNECT_TIMEOUT_SECONDS)
        if options.get("password"):
            credentials = [options["username"].encode()] if options.get("username") else []
            protocol.transport.write(_command(b"AUTH", *credentials, options["password"].encode()))
        return protocol

    async def _maintain(self) -> None:
        backoff = 0.0
        while True:
            try:
                self._protocol = await self._open()
            except (OSError, asyncio.TimeoutError) as exc:
                self._disconnected(ConnectionError(f"Redis pub/sub cannot connect: {exc}"))
                backoff = min(max(backoff * 2, 0.2), 5.0)
                await asyncio.sleep(backoff)
                continue
            backoff = 0.0
            self._awaiting_pong = False
            if self._connected.done():
                self._connected = asyncio.get_running_loop().create_future()
            self._connected.set_result(None)
            if self._queues:
                self._resubscribing = set(self._queues)
                self._send(b"SUBSCRIBE", *self._queues)
            protocol = self._protocol
            while not protocol.closed.done():
                done, _ = await asyncio.wait((protocol.closed,), timeout=PING_SECONDS)
                if done:
                    break
                if self._awaiting_pong:
                    logger.warning("redis pub/sub: no answer to a ping in %ss; reconnecting", PING_SECONDS)
                    protocol.transport.abort()
                    break
                self._awaiting_pong = True
                self._send(b"PING")
            self._disconnected(ConnectionError("Redis pub/sub connection lost"))

    def _disconnected(self, exc: Exception) -> None:
        self._protocol = None
        self._subscribed.clear()
        self._resubscribing.clear()
        if self._connected.done():
            self._connected = asyncio.get_running_loop().create_future()
        self._connected.set_exception(exc)
        self._connected.exception()  # (marked retrieved: nobody may be waiting for it)
        for waiting in self._waiting.values():
            for future in waiting:
                if not future.done():
                    future.set_exception(exc)
        self._waiting.clear()
        for queues in self._queues.values():
            for queue in queues:
                queue.put_nowait(RESYNC)

    def _dispatch(self, protocol: _Protocol, reply) -> None:
        if protocol is not self._protocol:
            return
        if isinstance(reply, list) and reply:
            kind = reply[0]
            if kind == b"message":
                for queue in self._queues.get(reply[1], ()):
                    queue.put_nowait(reply[2])
            elif kind == b"subscribe":
                channel = reply[1]
                if channel not in self._queues:
                    # Its last reader left while the subscription was on its way (it gave up waiting).
                    self._send(b"UNSUBSCRIBE", channel)
                else:
                    self._subscribed.add(channel)
                    if channel in self._resubscribing:
                        # Its readers read the stream again: it holds what was published while they
                        # were not subscribed.
                        self._resubscribing.discard(channel)
                        for queue in self._queues[channel]:
                            queue.put_nowait(RESYNC)
                for future in self._waiting.pop(channel, ()):
                    if not future.done():
                        future.set_result(None)
            elif kind == b"pong":
                self._awaiting_pong = False
        elif reply == b"PONG":
            # With no subscription left the connection is out of pub/sub mode, and Redis answers a PING
            # as to any client (it used to go unnoticed: a reconnection and a warning every 30 s when idle).
            self._awaiting_pong = False
        elif isinstance(reply, hiredis.ReplyError):
            logger.warning("redis pub/sub: %s; reconnecting", reply)
            protocol.transport.abort()


@per_event_loop
def channel_hub() -> ChannelHub:
    """The running event loop's hub, subscribed on the deployment's Redis."""
    return ChannelHub(settings.REDIS_URL)
