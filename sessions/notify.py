"""Telling connected WebSockets that a run started in a session they follow.

Notifications travel on the channel layer (group `session.<id>`), but most sessions have no socket
attached (OpenAI and REST clients), so sockets register in a Redis set and the engine skips the channel
layer entirely when it is empty: one EXISTS instead of a channel-layer round trip per run start.
"""

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from beamclaw_project.infra.redis import async_redis, redis_client

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


def notify_session(session_id, run_id) -> None:
    if not redis_client().exists(_subscribers_key(session_id)):
        return
    layer = get_channel_layer()
    if layer is not None:
        async_to_sync(layer.group_send)(
            session_group(session_id), {"type": "run.started", "run_id": str(run_id), "session_id": str(session_id)}
        )
