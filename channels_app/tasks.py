"""Thin Celery tasks (they take ids and call a service) and the sweeper chore. Replies go out on the
`system` queue.

The worker runs a thread pool, where Celery cannot enforce time limits; an attempt is a few queries and one
transport call, which each transport bounds by BEAMCLAW_CHANNEL_DELIVERY_TIMEOUT_SECONDS (or its own limit).
"""

from celery import shared_task
from django.conf import settings

from beamclaw_project.infra.queues import SYSTEM_QUEUE
from channels_app import services
from channels_app.transport import TransientDeliveryError, retry_countdown


@shared_task(name="channels.deliver_reply", bind=True, queue=SYSTEM_QUEUE, acks_late=True, ignore_result=True, max_retries=None)
def deliver_reply(self, reply_id: int) -> None:
    conf = settings.BEAMCLAW_CHANNELS
    try:
        services.channel_reply_deliver(reply_id=reply_id, final_attempt=self.request.retries + 1 >= conf["DELIVERY_ATTEMPTS"])
    except TransientDeliveryError as exc:
        countdown = retry_countdown(retries=self.request.retries, base_seconds=conf["DELIVERY_RETRY_BASE_SECONDS"], error=exc)
        raise self.retry(exc=exc, countdown=countdown, queue=SYSTEM_QUEUE)


def replies_sweep() -> None:
    """A housekeeping chore (channels_app/apps.py): deliver the replies whose run's end went unheard."""
    for reply_id in services.channel_reply_sweep():
        deliver_reply.delay(reply_id)
