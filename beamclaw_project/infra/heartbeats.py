"""Worker heartbeats: each worker process writes `bc:worker:<node>` every housekeeping tick with an
expiry of three ticks, so a worker that died (even by SIGKILL) disappears from /health and from
`node_alive` within three ticks. Work pinned to one worker (a background process) asks `node_alive`
before waiting on it."""

from beamclaw_project.infra.redis import async_redis, redis_client

KEY_PREFIX = "bc:worker:"


def heartbeat_key(node: str) -> str:
    return f"{KEY_PREFIX}{node}"


def heartbeat_write(node: str, *, interval_seconds: float) -> None:
    redis_client().set(heartbeat_key(node), "1", ex=max(int(interval_seconds * 3), 5))


def node_alive(node: str) -> bool:
    return bool(redis_client().exists(heartbeat_key(node)))


async def live_nodes() -> list[str]:
    return [key.decode()[len(KEY_PREFIX):] async for key in async_redis().scan_iter(f"{KEY_PREFIX}*")]


def live_nodes_now() -> list[str]:
    """live_nodes for threads (the reapers)."""
    return [key.decode()[len(KEY_PREFIX):] for key in redis_client().scan_iter(f"{KEY_PREFIX}*")]
