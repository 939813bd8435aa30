"""The Redis clients every process shares: one pool for threads (workers, management commands) and one
for the event loop (Daphne). Redis holds only what can be rebuilt or may lapse (event streams, leases,
counters, heartbeats); Postgres is the source of truth."""

from functools import lru_cache

import redis
import redis.asyncio as aioredis
from django.conf import settings

# An async read that outlives the longest XREAD block (5 s) by this much is a dead connection.
ASYNC_SOCKET_TIMEOUT_SECONDS = 15


@lru_cache(maxsize=1)
def redis_client() -> redis.Redis:
    """One connection pool per process, shared by all worker threads (redis-py is thread-safe)."""
    return redis.Redis.from_url(settings.REDIS_URL, max_connections=1000, health_check_interval=30)


@lru_cache(maxsize=1)
def _async_pool() -> aioredis.ConnectionPool:
    return aioredis.ConnectionPool.from_url(
        settings.REDIS_URL, max_connections=10000, socket_timeout=ASYNC_SOCKET_TIMEOUT_SECONDS, socket_connect_timeout=5
    )


def async_redis() -> aioredis.Redis:
    return aioredis.Redis(connection_pool=_async_pool())
