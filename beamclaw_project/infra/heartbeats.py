"""Worker heartbeats: each worker process writes `bc:worker:<node>` every housekeeping tick with an
expiry of three ticks, so a worker that died (even by SIGKILL) disappears from /health and from
`node_alive` within three ticks. Work pinned to one worker (a background process) asks `node_alive`
before waiting on it.

The value is the process's incarnation, new each time a process starts: a worker restarted under the same
node name (a container restarted in place) is told apart from the one that died, whose broker messages
are given back without waiting for that name's heartbeat to lapse (infra/broker.py)."""

import os
import socket
import uuid

from beamclaw_project.infra.redis import async_redis, redis_client

KEY_PREFIX = "bc:worker:"
INCARNATION = uuid.uuid4().hex[:16]
# Beat's own heartbeat (cron/scheduler.py), read by `manage.py doctor`: it names the host and process.
BEAT_KEY = "bc:beat"
BEAT_TTL_SECONDS = 30


def heartbeat_key(node: str) -> str:
    return f"{KEY_PREFIX}{node}"


def heartbeat_ttl_seconds(interval_seconds: float) -> int:
    return max(int(interval_seconds * 3), 5)


def heartbeat_write(node: str, *, interval_seconds: float) -> None:
    redis_client().set(heartbeat_key(node), INCARNATION, ex=heartbeat_ttl_seconds(interval_seconds))


def node_alive(node: str) -> bool:
    return bool(redis_client().exists(heartbeat_key(node)))


def node_incarnations(nodes: list[str]) -> list[str | None]:
    """The incarnation of each node's live process, or None where the node has no heartbeat."""
    values = redis_client().mget([heartbeat_key(node) for node in nodes]) if nodes else []
    return [value.decode() if value is not None else None for value in values]


async def live_nodes() -> list[str]:
    return [key.decode()[len(KEY_PREFIX):] async for key in async_redis().scan_iter(f"{KEY_PREFIX}*")]


def beat_heartbeat_write() -> None:
    redis_client().set(BEAT_KEY, f"{socket.gethostname()} pid {os.getpid()}", ex=BEAT_TTL_SECONDS)
