from django.core.management.base import BaseCommand, CommandError

from tenants.auth import AuthError, authenticate_key


class Command(BaseCommand):
    help = "Exit 0 if the API key authenticates, 1 (with the reason) if not."

    def add_arguments(self, parser):
        parser.add_argument("api_key")

    def handle(self, *args, api_key, **options):
        try:
            principal = authenticate_key(api_key)
        except AuthError as exc:
            raise CommandError(exc.message)
        self.stdout.write(f"valid for tenant {principal.tenant.slug}")
