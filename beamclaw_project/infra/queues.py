"""Queue names. Each tenant's work goes to its own queue, `tenant.<slug>`, so one tenant's backlog never
sits in front of another's (the Redis transport takes turns between the queues a worker consumes);
fleet-wide chores go to `system`."""

SYSTEM_QUEUE = "system"
TENANT_QUEUE_PREFIX = "tenant."


def tenant_queue(slug: str) -> str:
    return f"{TENANT_QUEUE_PREFIX}{slug}"


def tenant_of_queue(queue: str) -> str | None:
    return queue[len(TENANT_QUEUE_PREFIX):] if queue.startswith(TENANT_QUEUE_PREFIX) else None
