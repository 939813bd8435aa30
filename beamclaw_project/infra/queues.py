"""Queue names. Each tenant's work goes to its own queue, `tenant.<slug>`, so one tenant's backlog never
sits in front of another's (the Redis transport takes turns between the queues a worker consumes);
fleet-wide chores go to `system`.

Depths are read where kombu keeps the messages: one Redis list per queue and priority step (the list
named after the queue for the default priority, `<queue>\\x06\\x16<step>` for the others), through the
broker's own channel so its key prefix and priority steps are the ones the workers use. A message a worker
has fetched but not yet acknowledged sits in kombu's `unacked` hash instead, and is not counted: a depth
is what waits for a worker.

Two priorities. kombu's Redis transport reads a lower priority step before a higher one across all the queues
a worker consumes (its turns between the queues are taken within a step). Work that holds a worker for
seconds (run steps, tool calls, compaction) is sent at WORK_PRIORITY, one step behind the short tasks that
start or follow it (cron wake-ups and settles, deliveries, housekeeping), so those are not queued behind the
work already under way: a cron job falling due while its tenant has hundreds of steps queued still starts
on time, and a burst of wake-ups is claimed before the runs it started take the worker's time."""

from collections.abc import Iterable

from celery import current_app

SYSTEM_QUEUE = "system"
TENANT_QUEUE_PREFIX = "tenant."
WORK_PRIORITY = 3  # kombu's Redis steps are 0, 3, 6, 9; the short tasks keep the default, 0


def tenant_queue(slug: str) -> str:
    return f"{TENANT_QUEUE_PREFIX}{slug}"


def tenant_of_queue(queue: str) -> str | None:
    return queue[len(TENANT_QUEUE_PREFIX):] if queue.startswith(TENANT_QUEUE_PREFIX) else None


def queue_depths(*, tenant_slugs: Iterable[str]) -> dict[str, int]:
    """Messages waiting in the system queue and in the queue of each given tenant, keyed by queue name
    (`system`, `tenant.<slug>`), read in one pipelined round trip to the broker."""
    names = [SYSTEM_QUEUE, *(tenant_queue(slug) for slug in tenant_slugs)]
    with current_app.pool.acquire(block=True) as connection:
        channel = connection.default_channel
        steps = list(channel.priority_steps)
        with channel.conn_or_acquire() as client, client.pipeline(transaction=False) as pipe:
            for name in names:
                for step in steps:
                    pipe.llen(channel._q_for_pri(name, step))
            lengths = pipe.execute()
    return {name: sum(lengths[i * len(steps):(i + 1) * len(steps)]) for i, name in enumerate(names)}
