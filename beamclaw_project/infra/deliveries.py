"""Deliveries that outlive their tasks: cron webhooks and chat-channel replies.

A delivery is a row in Postgres (pending until delivered or failed) and a chain of Celery tasks, one per
attempt, a transient failure scheduling the next by countdown. The chain can be lost: with the worker
that holds a retry's countdown in memory (SIGKILL), or with Redis (a restart without persistence). So a
lease per delivery says that a task of its chain is queued, waiting out a countdown or running; the apps'
sweepers re-send pending deliveries whose lease is gone (`deliveries_unleased`). The number of attempts
is counted on the row, so a chain started again does not start counting again.
"""

from typing import Callable

from beamclaw_project.infra.leases import QUEUED, Lease, lease_mark_queued, lease_values
from beamclaw_project.infra.tasks import task_send

# How long after a retry's countdown the chain may take to pick it up before a sweeper re-sends it.
RETRY_SLACK_SECONDS = 30


def delivery_lease_key(kind: str, item_id) -> str:
    return f"bc:delivery:{kind}:{item_id}"


def delivery_send(task_name: str, kind: str, item_id, *, queue: str, only_if_free: bool = False) -> bool:
    """Mark the delivery queued, then send its task; with only_if_free (a sweeper), only when no task of
    its chain holds it. Returns whether it was sent."""
    if not lease_mark_queued(delivery_lease_key(kind, item_id), only_if_free=only_if_free) and only_if_free:
        return False
    task_send(task_name, [item_id], queue=queue)
    return True


def delivery_attempt(
    task, kind: str, item_id, attempt: Callable[[], None], *, retry_on: tuple, countdown: Callable[[Exception], float],
    queue: str,
) -> None:
    """Run `attempt()` under the delivery's lease (inside the Celery task `task`). When it raises one of
    `retry_on`, retry the task `countdown(exc)` seconds later, the lease left `queued` until a little after."""
    lease = Lease(delivery_lease_key(kind, item_id))
    if not lease.acquire():
        return  # another task of its chain is on it
    try:
        attempt()
    except retry_on as exc:
        delay = countdown(exc)
        lease.hand_over(QUEUED, ttl_ms=int((delay + RETRY_SLACK_SECONDS) * 1000))
        raise task.retry(exc=exc, countdown=delay, queue=queue)
    except BaseException:
        lease.release()
        raise
    lease.release()


def deliveries_unleased(kind: str, item_ids: list) -> list:
    """The deliveries among `item_ids` that no task holds: their chain was lost."""
    values = lease_values([delivery_lease_key(kind, item_id) for item_id in item_ids])
    return [item_id for item_id, value in zip(item_ids, values) if value is None]
