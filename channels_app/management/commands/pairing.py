"""`manage.py pairing list [--tenant SLUG]` and `manage.py pairing approve CODE [--tenant SLUG]`: the
operator's side of `dm_policy: pairing`, for a shell on the server (the REST API and the admin do the same
through the same service)."""

from datetime import UTC

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from beamclaw_project.errors import DomainError
from channels_app.accounts import pairing_approve, pairings_pending
from tenants.models import Tenant


class Command(BaseCommand):
    help = "List pending DM pairing codes, or approve one (the sender's DMs then reach the agent)."

    def add_arguments(self, parser):
        actions = parser.add_subparsers(dest="action", required=True, metavar="{list,approve}")
        listing = actions.add_parser("list", help="Pending, unexpired codes, oldest first.")
        listing.add_argument("--tenant", metavar="SLUG", help="Only this tenant's accounts.")
        approve = actions.add_parser("approve", help="Approve the sender who was sent CODE.")
        approve.add_argument("code", metavar="CODE")
        approve.add_argument("--tenant", metavar="SLUG", help="Look for the code in this tenant's accounts only.")

    def handle(self, *args, action: str, tenant: str | None = None, code: str | None = None, **options):
        scope = self._tenant(tenant)
        if action == "list":
            self._list(scope)
            return
        try:
            pairing = pairing_approve(code=code, tenant=scope)
        except DomainError as exc:
            raise CommandError(exc.message) from None
        account = pairing.account
        self.stdout.write(
            f"Approved {_sender(pairing)} on {account.tenant.slug}/{account.name}: their DMs now reach "
            f"{account.agent.slug} (or the agent a binding names)."
        )

    def _tenant(self, slug: str | None) -> Tenant | None:
        if slug is None:
            return None
        tenant = Tenant.objects.filter(slug=slug).first()
        if tenant is None:
            raise CommandError(f"No tenant '{slug}'; `manage.py pairing list` shows the tenants with pending codes.")
        return tenant

    def _list(self, tenant: Tenant | None) -> None:
        rows = [
            (p.account.tenant.slug, p.account.name, _sender(p), p.code, _expires(p.expires_at))
            for p in pairings_pending(tenant=tenant)
        ]
        if not rows:
            self.stdout.write("No pending pairing codes.")
            return
        header = ("TENANT", "ACCOUNT", "SENDER", "CODE", "EXPIRES")
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
        for row in [header, *rows]:
            self.stdout.write("  ".join(value.ljust(width) for value, width in zip(row, widths)).rstrip())


def _sender(pairing) -> str:
    return f"{pairing.sender_name} ({pairing.sender_id})" if pairing.sender_name else pairing.sender_id


def _expires(moment) -> str:
    minutes = max(0, int((moment - timezone.now()).total_seconds() // 60))
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M} UTC (in {minutes} min)"
