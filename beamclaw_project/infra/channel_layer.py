"""The Channels layer: channels_redis, made to outlast a Redis restart.

Stock, a Redis connection error inside `receive` ends the consumer that waits on it, so every WebSocket of
the web process closes with 1011 when Redis restarts. Here `receive` waits and tries again instead, with
backoff: messages sent to a socket while Redis was away are gone (they lived in Redis), and the sockets'
group memberships are restored by sessions/notify.py (RedisResetWatch). Runs the sockets follow are read
from their event streams, which recover on their own (sessions/run_stream.py).
"""

import asyncio
import atexit
import logging
import os
import threading
import time
from typing import Awaitable, Callable

from channels.layers import get_channel_layer
from channels_redis.core import RedisChannelLayer

from beamclaw_project.infra.redis import CONNECTION_LOST

logger = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 5.0


class ResilientRedisChannelLayer(RedisChannelLayer):
    async def receive(self, channel):
        backoff = 0.2
        while True:
            try:
                return await super().receive(channel)
            except CONNECTION_LOST as exc:
                logger.warning("channel layer: Redis unreachable (%s); retrying in %.1fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)


# --- sends from synchronous code ------------------------------------------------------------------------------


class _LaterSends:
    """Channel-layer sends that synchronous code (views' threads, Celery's task threads) hands over without waiting
    for them: they go out one after another, in the order handed over, on an event loop of the process's own in a
    daemon thread. async_to_sync in a thread without an event loop makes a loop, and the layer a Redis connection,
    for every send (~4 ms of CPU each on this project's machine, against ~0.7 on a loop that stays); in a web
    process's request thread it waits for the main loop, on the way to the request's answer.
    A send that fails is logged; the process waits up to DRAIN_SECONDS at exit for those handed over."""

    DRAIN_SECONDS = 1.0

    def __init__(self):
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue | None = None
        self._pid: int | None = None
        self._pending = 0

    def hand_over(self, send: Callable[[], Awaitable[None]], what: str) -> None:
        """`send`: makes the coroutine that sends (run on the sends' loop); `what`: says what it was, if it fails."""
        with self._lock:
            if self._loop is None or self._pid != os.getpid():  # (a forked child has no such thread)
                self._start()
            self._pending += 1
            loop, queue = self._loop, self._queue
        loop.call_soon_threadsafe(queue.put_nowait, (send, what))

    def drain(self, timeout: float = DRAIN_SECONDS) -> None:
        """Wait (up to `timeout` seconds) until the sends handed over have gone out."""
        deadline = time.monotonic() + timeout
        while self._pending and self._pid == os.getpid() and time.monotonic() < deadline:
            time.sleep(0.01)

    def _start(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop, self._queue, self._pid, self._pending = loop, asyncio.Queue(), os.getpid(), 0
        loop.create_task(self._send_each(self._queue))
        threading.Thread(target=loop.run_forever, name="channel-layer-sends", daemon=True).start()

    async def _send_each(self, queue: asyncio.Queue) -> None:
        while True:
            send, what = await queue.get()
            try:
                await send()
            except Exception:  # noqa: BLE001 - one failed notification must not stop the ones after it
                logger.exception("could not notify WebSocket clients: %s", what)
            finally:
                with self._lock:
                    self._pending -= 1


_later_sends = _LaterSends()
atexit.register(_later_sends.drain)


def group_send_later(group: str, message: dict, *, what: str) -> None:
    """Send `message` to the channel-layer group from synchronous code, without waiting (_LaterSends)."""
    layer = get_channel_layer()
    if layer is not None:
        _later_sends.hand_over(lambda: layer.group_send(group, message), what)


def send_later(send: Callable[[], Awaitable[None]], *, what: str) -> None:
    """Run the coroutine `send()` makes on the process's loop of channel-layer sends, after those handed over before
    it, without waiting (_LaterSends): a send that must first read something, asynchronously."""
    _later_sends.hand_over(send, what)
