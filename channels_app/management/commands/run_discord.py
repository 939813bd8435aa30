import asyncio
import logging

from django.core.management.base import BaseCommand

from channels_app.discord.bot import serve_forever

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Host every enabled Discord account of every tenant (one discord.py client each) until SIGTERM."

    def handle(self, *args, **options):
        # Logged, not printed: the process's output is log lines (JSON by default, docs/metrics.md).
        logger.info("run_discord: hosting the enabled Discord accounts; Ctrl-C stops.")
        asyncio.run(serve_forever())
