from django.core.management.base import BaseCommand

from sessions.asyncapi import asyncapi_json


class Command(BaseCommand):
    help = (
        "Print the AsyncAPI document of the WebSocket protocol and the run events (JSON), as served at "
        "/api/asyncapi.json: the companion of `manage.py spectacular` for client generators."
    )

    def add_arguments(self, parser):
        parser.add_argument("--host", default="localhost:8000", help="The servers' host[:port] (default %(default)s).")
        parser.add_argument("--secure", action="store_true", help="wss:// and https:// servers.")

    def handle(self, *args, host, secure, **options):
        self.stdout.write(asyncapi_json(host=host, secure=secure))
