"""A channel with no platform behind it, registered the way an operator's plug-in registers a transport
(name this module in BEAMCLAW_PLUGINS).

The transport runs in the worker, so what it "posts" goes to a Redis list, the one memory the worker
and the test process share; `sent(peer)` reads it back. A target's `script` makes an attempt fail:
`transient-once` (the first attempt of each delivery is refused as busy) or `permanent` (every attempt
is refused for good). Every attempt is counted per delivery id (`attempts`)."""

import json

from beamclaw_project.infra.redis import redis_client
from channels_app.transport import (
    DeliveryReceipt,
    OutboundMessage,
    PermanentDeliveryError,
    TransientDeliveryError,
    Transport,
    register_transport,
)

KIND = "memory"
_SENT = "test:memory-channel:sent"


def _attempts_key(delivery_id: str) -> str:
    return f"test:memory-channel:attempts:{delivery_id}"


class MemoryTransport(Transport):
    def send(self, message: OutboundMessage) -> DeliveryReceipt:
        attempt = redis_client().incr(_attempts_key(message.delivery_id))
        script = message.target.get("script")
        if script == "transient-once" and attempt == 1:
            raise TransientDeliveryError("the platform is busy")
        if script == "permanent":
            raise PermanentDeliveryError("the platform does not know this conversation")
        record = {"delivery_id": message.delivery_id, "target": message.target, "text": message.text, "data": message.data}
        position = redis_client().rpush(_SENT, json.dumps(record))
        return DeliveryReceipt(delivery_id=message.delivery_id, remote_id=f"memory-{position}")


def sent(peer: str) -> list[dict]:
    """What the transport delivered to one conversation, oldest first."""
    records = (json.loads(raw) for raw in redis_client().lrange(_SENT, 0, -1))
    return [record for record in records if record["target"].get("peer") == peer]


def attempts(delivery_id: str) -> int:
    return int(redis_client().get(_attempts_key(delivery_id)) or 0)


register_transport(KIND, MemoryTransport())
