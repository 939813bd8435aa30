"""Telling connected WebSockets that a run started in a session they follow.

Notifications travel on the channel layer (group `session.<id>`), but most sessions have no socket
attached (OpenAI and REST clients), so sockets register in a Redis set and the engine skips the channel
layer entirely when it is empty: one EXISTS instead of a channel-layer round trip per run start.

Both live in Redis, so a Redis that restarts empty forgets every socket's subscriptions. Each web
process notices (`RedisResetWatch`: a marker key it finds gone) and has its sockets subscribe again.
"""

import asyncio
import logging
import uuid
import weakref

import redis
from channels.layers import get_channel_layer

from beamclaw_project.infra.channel_layer import group_send_later, send_later
from beamclaw_project.infra.redis import Command, async_redis

SUBSCRIPTION_TTL_SECONDS = 24 * 3600


def session_group(session_id) -> str:
    return f"session.{session_id}"


def _subscribers_key(session_id) -> str:
    return f"bc:session:{session_id}:sockets"


async def subscribe(session_id, channel_name: str) -> None:

    client = async_redis()
    await client.sadd(_subscribers_key(session_id), channel_name)
    await client.expire(_subscribers_key(session_id), SUBSCRIPTION_TTL_SECONDS)
    await get_channel_layer().group_add(session_group(session_id), channel_name)


async def unsubscribe(session_id, channel_name: str) -> None:

    await async_redis().srem(_subscribers_key(session_id), channel_name)
    await get_channel_layer().group_discard(session_group(session_id), channel_name)


def session_watched_command(session_id) -> Command:
    """Whether a socket follows the session (EXISTS), to send with the other commands of a run's start: only
    then is session_subscribers_notify worth its channel-layer round trip."""
    return Command("EXISTS", (_subscribers_key(session_id),))


def session_subscribers_notify(session_id, run_id) -> None:
    """Tell the sockets that follow the session that the run started; sent without waiting (group_send_later)."""
    group_send_later(session_group(session_id), _run_started_message(session_id, run_id),
                     what=f"run {run_id} started in session {session_id}")


def session_subscribers_notify_if_any(session_id, run_id) -> None:
    """session_subscribers_notify if a socket follows the session (session_watched_command), both without
    waiting: the EXISTS is asked on the loop that sends (send_later)."""
    async def send():
        layer = get_channel_layer()
        if layer is not None and await async_redis().exists(_subscribers_key(session_id)):
            await layer.group_send(session_group(session_id), _run_started_message(session_id, run_id))

    send_later(send, what=f"run {run_id} started in session {session_id}")


def _run_started_message(session_id, run_id) -> dict:
    return {"type": "run.started", "run_id": str(run_id), "session_id": str(session_id)}


# --- subscriptions after Redis lost its data -------------------------------------------------------

EPOCH_KEY = "bc:epoch"
EPOCH_CHECK_SECONDS = 2.0
logger = logging.getLogger(__name__)


class RedisResetWatch:
    """One per web process: every EPOCH_CHECK_SECONDS, read a marker key that nothing expires or deletes.
    When it is gone, Redis lost its data (a restart without persistence, a failover); every registered
    socket then subscribes again (`await socket.resubscribe()`)."""

    def __init__(self):
        self.sockets: weakref.WeakSet = weakref.WeakSet()
        self.epoch: bytes | None = None
        self.task: asyncio.Task | None = None

    def register(self, socket) -> None:
        self.sockets.add(socket)
        if self.task is None or self.task.done():
            self.task = asyncio.ensure_future(self._watch())

    def unregister(self, socket) -> None:
        self.sockets.discard(socket)

    async def _watch(self) -> None:
        client = async_redis()
        while self.sockets:
            try:
                await client.set(EPOCH_KEY, uuid.uuid4().hex, nx=True)
                epoch = await client.get(EPOCH_KEY)
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                epoch = None  # unreachable: look again at the next check
            # After a failed round the epoch stays old, so the next check tries again (subscribing twice is
            # harmless: sets and groups).
            if epoch is not None and (self.epoch is None or epoch == self.epoch or await self._resubscribe_all()):
                self.epoch = epoch
            await asyncio.sleep(EPOCH_CHECK_SECONDS)

    async def _resubscribe_all(self) -> bool:
        sockets = list(self.sockets)
        logger.warning("Redis lost its data: subscribing %s WebSockets again", len(sockets))
        failed = 0
        for socket in sockets:
            try:
                await socket.resubscribe()
            except Exception as exc:  # noqa: BLE001 - one socket's failure must not leave the others unsubscribed
                failed += 1
                logger.warning("could not subscribe a WebSocket again (%s); retrying shortly", exc)
        return failed == 0


redis_reset_watch = RedisResetWatch()
