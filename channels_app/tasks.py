"""Thin Celery tasks (they take ids and call a service) and the sweeper chore. Replies go out on the
`system` queue, each delivery's chain of attempts under a lease (beamclaw_project/infra/deliveries.py).

The worker runs a thread pool, where Celery cannot enforce time limits; an attempt is a few queries and one
transport call, which each transport bounds by BEAMCLAW_CHANNEL_DELIVERY_TIMEOUT_SECONDS (or its own limit).
"""

from celery import shared_task
from django.conf import settings

from beamclaw_project.infra.deliveries import delivery_attempt
from beamclaw_project.infra.queues import SYSTEM_QUEUE
from channels_app import services
from channels_app.transport import TransientDeliveryError, retry_countdown


@shared_task(name=services.DELIVER_TASK, bind=True, queue=SYSTEM_QUEUE, acks_late=True, ignore_result=True, max_retries=None)
def deliver_reply(self, reply_id: int) -> None:
    base = settings.BEAMCLAW_CHANNELS["DELIVERY_RETRY_BASE_SECONDS"]
    delivery_attempt(
        self, services.DELIVERY_KIND, reply_id, lambda: services.channel_reply_deliver(reply_id=reply_id),
        retry_on=(TransientDeliveryError,),
        countdown=lambda exc: retry_countdown(retries=self.request.retries, base_seconds=base, error=exc),
        queue=SYSTEM_QUEUE,
    )


def replies_sweep() -> None:
    """A housekeeping chore (channels_app/apps.py): send the replies whose run's end went unheard, and
    again those whose chain of attempts was lost."""
    services.channel_reply_sweep()
