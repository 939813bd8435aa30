"""Worker-side housekeeping, run inside every `python manage.py worker` process.

Every few seconds the worker (1) announces itself in Redis (infra/heartbeats.py: /health, and work
pinned to this worker) and gives back to their queues the broker messages of workers that died holding
them (infra/broker.py), (2) consumes the queues of tenants created since it started (the broadcast at
creation time usually got there first; this covers workers that were down), and (3) runs the chores
the apps registered (infra/housekeeping.py: reapers for runs and tool calls of dead workers, approval
timeouts, idempotency keys, background processes of ended sessions).

A worker serves one pool of tenants (`worker --tenants/--exclude-tenants`, tenants/queues.py). Both ways
a new tenant's queue reaches a running worker, the creation broadcast (`tenant_queue_add`, below) and the
reconciliation in (2), ask the pool first, so a pool never grows beyond what it was started with.
"""

import logging
import socket
import threading
import time

from celery import bootsteps, signals
from celery.worker.control import control_command, ok
from django.conf import settings
from django.db import close_old_connections

from beamclaw_project.infra.broker import consumer_owner_set, owner_parse
from beamclaw_project.infra.draining import drain_begin
from beamclaw_project.infra.heartbeats import INCARNATION, heartbeat_ttl_seconds, heartbeat_write, node_incarnations
from beamclaw_project.infra.housekeeping import run_chores
from beamclaw_project.infra.outages import outage_of
from beamclaw_project.infra.queues import tenant_queue
from tenants.queues import EVERY_TENANT, TENANT_QUEUE_ADD, TenantPool, active_tenant_queues

logger = logging.getLogger(__name__)

_pool: TenantPool = EVERY_TENANT  # set once by the worker command, before the worker starts


def worker_pool_set(*, pool: TenantPool) -> None:
    global _pool
    _pool = pool


@control_command(name=TENANT_QUEUE_ADD, args=[("slug", str)], signature="<slug>")
def tenant_queue_add(state, slug: str, **kwargs):
    """Consume a new tenant's queue, when this worker's pool admits the tenant (tenants.queues.announce_queue)."""
    if not _pool.admits(slug):
        return ok(f"tenant {slug} is not in this worker's pool")
    queue = tenant_queue(slug)
    if queue not in {q.name for q in state.consumer.task_consumer.queues}:
        _queue_consume(state.consumer, queue)
    return ok(f"consuming {queue}")


def _queue_consume(consumer, queue: str) -> None:
    logger.info("consuming new tenant queue %s", queue)
    # add_task_queue touches the consumer's connection, which belongs to the event loop.
    consumer.call_soon(consumer.add_task_queue, queue)


# How many task events may wait for their batch; more are published at once by the thread that adds one.
TASK_EVENTS_BUFFER_LIMIT = 2000


class TaskEventsBatched(bootsteps.StartStopStep):
    """Tasks' monitoring events are published in batches, every BEAMCLAW_TASK_EVENTS_FLUSH_SECONDS, not one by one.

    Workers send task events only while a monitor asks for them (Flower does, every 5 s). Celery buffers them
    but publishes each as soon as its consumer loop turns, so the task-received and task-started events of a
    run's step were two Redis publishes between the worker's receipt of the step and its start: under
    `make run`, on the first token's path (docs/performance.md, "Tenth step"). Batched, they are published
    off that path, a batch in one message. Flower shows a task up to that interval (0.5 s) later. The events
    waiting when the worker stops are published as it stops.
    """

    requires = {"celery.worker.consumer.events:Events"}

    def __init__(self, parent, **kwargs):
        super().__init__(parent, **kwargs)
        self._timer = None
        self._celerys = None  # the dispatcher's own settings, given back when the worker stops

    def start(self, consumer):
        dispatcher = consumer.event_dispatcher
        interval = settings.BEAMCLAW["TASK_EVENTS_FLUSH_SECONDS"]
        # Celery buffers task events only with its event loop (the hub); without it each is sent at once. An
        # interval of 0 leaves Celery's own publishing.
        if dispatcher is None or not dispatcher.buffer_group or interval <= 0:
            return
        self._celerys = (dispatcher, dispatcher.on_send_buffered, dispatcher.buffer_limit)
        dispatcher.on_send_buffered = None
        dispatcher.buffer_limit = TASK_EVENTS_BUFFER_LIMIT
        self._timer = consumer.timer.call_repeatedly(interval, self._flush, (consumer,))

    def stop(self, consumer):
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._celerys is not None:
            # Without the timer, events of tasks still finishing go out as Celery sends them.
            dispatcher, on_send_buffered, buffer_limit = self._celerys
            dispatcher.on_send_buffered, dispatcher.buffer_limit = on_send_buffered, buffer_limit
            self._celerys = None
            self._flush(consumer)

    def shutdown(self, consumer):
        # After the pool's last tasks, before Celery closes the dispatcher.
        self._flush(consumer)

    @staticmethod
    def _flush(consumer):
        if consumer.event_dispatcher is not None:
            consumer.event_dispatcher.flush()


class Housekeeping(bootsteps.StartStopStep):
    requires = {"celery.worker.consumer.tasks:Tasks"}

    def __init__(self, parent, **kwargs):
        super().__init__(parent, **kwargs)
        self._stop = threading.Event()

    def start(self, consumer):
        # Celery stops and starts the consumer's steps again each time the broker connection comes back
        # (a Redis restart): each start gets a fresh stop event, or the new thread would find the last
        # stop already set and exit after one tick, leaving the worker without heartbeats or reapers.
        self._stop = threading.Event()
        hostname = consumer.hostname or socket.gethostname()
        # Before the first fetch: every message this process fetches is recorded as its own, and its heartbeat
        # is there to say it is alive before any other worker could look.
        consumer_owner_set(hostname, INCARNATION)
        try:
            heartbeat_write(hostname, interval_seconds=settings.BEAMCLAW["HOUSEKEEPING_SECONDS"])
        except Exception as exc:  # noqa: BLE001 - the first tick writes it again
            logger.warning("first heartbeat not written: %s", exc)
        threading.Thread(target=self._loop, args=(consumer, self._stop), name="housekeeping", daemon=True).start()

    def stop(self, consumer):
        self._stop.set()

    def _loop(self, consumer, stop: threading.Event):
        interval = settings.BEAMCLAW["HOUSEKEEPING_SECONDS"]
        hostname = consumer.hostname or socket.gethostname()
        while True:
            try:
                self._tick(consumer, hostname, interval)
            except Exception as exc:  # noqa: BLE001 - housekeeping must outlive a database or Redis blip
                if (store := outage_of(exc)) is not None:
                    logger.warning("housekeeping paused: %s is unavailable (%s)", store, exc)
                else:
                    logger.exception("housekeeping tick failed")
            finally:
                close_old_connections()
            if stop.wait(interval):
                return

    def _tick(self, consumer, hostname: str, interval: float) -> None:
        heartbeat_write(hostname, interval_seconds=interval)
        self._orphans_restore(consumer, interval)
        consuming = {q.name for q in consumer.task_consumer.queues}
        for queue in active_tenant_queues(pool=_pool):
            if queue not in consuming:
                _queue_consume(consumer, queue)
        run_chores(node=hostname)

    @staticmethod
    def _orphans_restore(consumer, interval: float) -> None:
        # A message fetched less than a heartbeat's lifetime ago is left alone whatever its owner's heartbeat
        # says: a worker that just started may not have written one yet.
        with consumer.app.pool.acquire(block=True) as connection:
            restored = connection.default_channel.qos.orphans_restore(
                _owners_alive, fetched_before=time.time() - heartbeat_ttl_seconds(interval)
            )
        if restored:
            logger.warning("gave back %d message(s) held by dead workers to their queues", restored)


def _owners_alive(owners: set[str]) -> set[str]:
    """The broker message owners ("<node> <incarnation>") whose process still beats."""
    owners = list(owners)
    nodes = [owner_parse(owner) for owner in owners]
    beating = node_incarnations([node for node, _ in nodes])
    return {owner for owner, (_, incarnation), live in zip(owners, nodes, beating) if live == incarnation}


@signals.worker_shutting_down.connect
def _drain_on_shutdown(sig=None, how=None, **kwargs):
    """SIGTERM (a warm shutdown): Celery stops taking tasks and waits for the running ones; running steps
    notice the drain at their next stream event (a reply being read is cut at once, see cut_on_drain) and go
    back to the queue for another worker."""
    logger.info("%s received: handing running steps back to the queue", sig or "shutdown")
    drain_begin()
