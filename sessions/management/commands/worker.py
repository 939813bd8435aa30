from django.conf import settings
from django.core.management.base import BaseCommand

from beamclaw_project.celery import app
from beamclaw_project.infra.queues import SYSTEM_QUEUE
from beamclaw_project.worker import Housekeeping
from tenants.queues import active_tenant_queues


class Command(BaseCommand):
    help = (
        "Run a Celery worker on every active tenant's queue plus the system queue. Tenants created while "
        "it runs are picked up without a restart."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--concurrency", "-c", type=int, default=settings.BEAMCLAW["WORKER_CONCURRENCY"],
            help="Threads; LLM steps mostly wait on the network, so this can be high (default %(default)s).",
        )
        parser.add_argument("--loglevel", "-l", default="INFO")
        parser.add_argument("--hostname", "-n", default=None, help="Celery node name, e.g. worker1@%%h.")

    def handle(self, *args, concurrency, loglevel, hostname, **options):
        queues = [SYSTEM_QUEUE, *active_tenant_queues()]
        app.steps["consumer"].add(Housekeeping)
        argv = [
            "worker",
            "--pool=threads",
            f"--concurrency={concurrency}",
            f"--loglevel={loglevel}",
            f"--queues={','.join(queues)}",
            # Gossip and mingle cost seconds at start-up and buy nothing here: state lives in Postgres.
            "--without-gossip",
            "--without-mingle",
        ]
        if hostname:
            argv.append(f"--hostname={hostname}")
        app.worker_main(argv)
