import asyncio

from django.core.management.base import BaseCommand

from channels_app.discord.bot import serve_forever


class Command(BaseCommand):
    help = "Host every enabled Discord account of every tenant (one discord.py client each) until SIGTERM."

    def handle(self, *args, **options):
        self.stdout.write("run_discord: hosting the enabled Discord accounts; Ctrl-C stops.")
        asyncio.run(serve_forever())
