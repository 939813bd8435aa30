"""Worker-side housekeeping, run inside every `python manage.py worker` process.

Every few seconds the worker (1) consumes the queues of tenants created since it started (the broadcast
at creation time usually got there first; this covers workers that were down), (2) announces itself in
Redis for /health, (3) re-enqueues runs orphaned by a dead worker, and (4) forgets expired idempotency keys.
"""

import logging
import socket
import threading

from celery import bootsteps
from django.conf import settings
from django.db import close_old_connections

logger = logging.getLogger(__name__)

WORKER_KEY_PREFIX = "bc:worker:"


def worker_heartbeat_key(hostname: str) -> str:
    return f"{WORKER_KEY_PREFIX}{hostname}"


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
        from sessions.engine import reap_orphaned_runs
        from sessions.events import redis_client
        from sessions.idempotency import idempotency_purge
        from tenants.queues import active_tenant_queues
        from tools.services import tools_housekeeping

        redis_client().set(worker_heartbeat_key(hostname), "1", ex=max(int(interval * 3), 5))
        consuming = {q.name for q in consumer.task_consumer.queues}
        for queue in active_tenant_queues():
            if queue not in consuming:
                logger.info("consuming new tenant queue %s", queue)
                # add_task_queue touches the consumer's connection, which belongs to the event loop.
                consumer.call_soon(consumer.add_task_queue, queue)
        reap_orphaned_runs()
        # One worker of the fleet every ten minutes is plenty for a 24-hour lifetime.
        if redis_client().set("bc:idempotency:purge", hostname, nx=True, ex=600):
            idempotency_purge()
        tools_housekeeping()  # approval timeouts, tool calls of dead workers, processes of ended sessions
