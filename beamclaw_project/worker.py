"""Worker-side housekeeping, run inside every `python manage.py worker` process.

Every few seconds the worker (1) announces itself in Redis (infra/heartbeats.py: /health, and work
pinned to this worker), (2) consumes the queues of tenants created since it started (the broadcast at
creation time usually got there first; this covers workers that were down), and (3) runs the chores
the apps registered (infra/housekeeping.py: reapers for runs and tool calls of dead workers, approval
timeouts, idempotency keys, background processes of ended sessions).
"""

import logging
import socket
import threading

from celery import bootsteps
from django.conf import settings
from django.db import close_old_connections

from beamclaw_project.infra.heartbeats import heartbeat_write
from beamclaw_project.infra.housekeeping import run_chores
from tenants.queues import active_tenant_queues

logger = logging.getLogger(__name__)


class Housekeeping(bootsteps.StartStopStep):
    requires = {"celery.worker.consumer.tasks:Tasks"}

    def __init__(self, parent, **kwargs):
        super().__init__(parent, **kwargs)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, consumer):
        self._thread = threading.Thread(target=self._loop, args=(consumer,), name="housekeeping", daemon=True)
        self._thread.start()

    def stop(self, consumer):
        self._stop.set()

    def _loop(self, consumer):
        interval = settings.BEAMCLAW["HOUSEKEEPING_SECONDS"]
        hostname = consumer.hostname or socket.gethostname()
        while True:
            try:
                self._tick(consumer, hostname, interval)
            except Exception:  # noqa: BLE001 - housekeeping must outlive a database or Redis blip
                logger.exception("housekeeping tick failed")
            finally:
                close_old_connections()
            if self._stop.wait(interval):
                return

    def _tick(self, consumer, hostname: str, interval: float) -> None:
        heartbeat_write(hostname, interval_seconds=interval)
        consuming = {q.name for q in consumer.task_consumer.queues}
        for queue in active_tenant_queues():
            if queue not in consuming:
                logger.info("consuming new tenant queue %s", queue)
                # add_task_queue touches the consumer's connection, which belongs to the event loop.
                consumer.call_soon(consumer.add_task_queue, queue)
        run_chores(node=hostname)
