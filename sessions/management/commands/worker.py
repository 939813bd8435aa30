import logging
import threading

from celery.signals import worker_ready
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from beamclaw_project.celery import app
from beamclaw_project.infra.gc_tuning import gc_settle_after_startup
from beamclaw_project.infra.queues import SYSTEM_QUEUE
from beamclaw_project.infra.warm_up import connections_warm_up
from beamclaw_project.worker import Housekeeping, TaskEventsBatched, worker_pool_set
from sessions.providers.registry import providers_warm_up
from tenants.queues import active_tenant_queues, tenant_pool_build

logger = logging.getLogger(__name__)


def _warm_up_then_settle() -> None:
    connections_warm_up()
    providers_warm_up()
    gc_settle_after_startup()  # (the SDKs' modules and clients, built after the worker was ready)


@worker_ready.connect
def _settle_when_ready(**_) -> None:
    gc_settle_after_startup()


def _slugs(value: str) -> list[str]:
    return [slug.strip() for slug in value.split(",") if slug.strip()]


class Command(BaseCommand):
    help = (
        "Run a Celery worker on every active tenant's queue plus the system queue, or on a pool of tenants "
        "(--tenants / --exclude-tenants: docs/scaling.md). Tenants created while it runs are picked up "
        "without a restart, when its pool admits them."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--concurrency", "-c", type=int, default=settings.BEAMCLAW["WORKER_CONCURRENCY"],
            help="Threads; LLM steps mostly wait on the network, so this can be high (default %(default)s).",
        )
        parser.add_argument(
            "--loglevel", "-l", default=settings.LOG_LEVEL, help="Default: LOG_LEVEL, as every process (%(default)s).",
        )
        parser.add_argument("--hostname", "-n", default=None, help="Celery node name, e.g. worker1@%%h.")
        pool = parser.add_mutually_exclusive_group()
        pool.add_argument(
            "--tenants", type=_slugs, default=None, metavar="SLUG,SLUG",
            help="Only these tenants' queues (they must exist): a pool of their own for large tenants.",
        )
        pool.add_argument(
            "--exclude-tenants", type=_slugs, default=[], metavar="SLUG,SLUG",
            help="Every active tenant's queue but these (the pool beside dedicated ones).",
        )
        parser.add_argument(
            "--no-system-queue", action="store_true",
            help="Leave the system queue (chat-channel replies, cron deliveries) to other workers.",
        )

    def handle(self, *args, concurrency, loglevel, hostname, tenants, exclude_tenants, no_system_queue, **options):
        try:
            pool, warnings = tenant_pool_build(only=tenants, exclude=exclude_tenants, system=not no_system_queue)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        # Logged, not printed: every line a worker writes is a JSON log line (docs/metrics.md, "Logs").
        for warning in warnings:
            logger.warning(warning)
        logger.info("worker pool: %s", pool.describe())
        queues = [*([SYSTEM_QUEUE] if pool.system else []), *active_tenant_queues(pool=pool)]
        if not queues:
            # Celery would fall back to its default queue, the system queue this worker was told to leave.
            raise CommandError(f"Nothing to consume: no active tenant in this pool ({pool.describe()}).")
        worker_pool_set(pool=pool)
        # The model SDKs take over a second to import and their clients tens of ms to build: on the side
        # while the worker starts, rather than in the first run's step (and without delaying readiness).
        threading.Thread(target=_warm_up_then_settle, name="providers-warm-up", daemon=True).start()
        app.steps["consumer"].add(Housekeeping)
        app.steps["consumer"].add(TaskEventsBatched)
        argv = [
            "worker",
            "--pool=threads",
            f"--concurrency={concurrency}",
            f"--loglevel={loglevel}",
            # Gossip and mingle cost seconds at start-up and buy nothing here: state lives in Postgres.
            "--without-gossip",
            "--without-mingle",
            f"--queues={','.join(queues)}",
        ]
        if hostname:
            argv.append(f"--hostname={hostname}")
        app.worker_main(argv)
