"""The Channels layer: channels_redis, made to outlast a Redis restart.

Stock, a Redis connection error inside `receive` ends the consumer that waits on it, so every WebSocket of
the web process closes with 1011 when Redis restarts. Here `receive` waits and tries again instead, with
backoff: messages sent to a socket while Redis was away are gone (they lived in Redis), and the sockets'
group memberships are restored by sessions/notify.py (RedisResetWatch). Runs the sockets follow are read
from their event streams, which recover on their own (sessions/run_stream.py).
"""

import asyncio
import logging

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
