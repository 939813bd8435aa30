"""`manage.py export_config [--tenant SLUG ...] [-o FILE]`: the current configuration as beamclaw.yaml
(tenants/config_file.py; docs/config.md). Secrets are written as ${BEAMCLAW_SECRET_...} references."""

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from tenants.config_file import ConfigInvalid, config_export


class Command(BaseCommand):
    help = ("Write the tenants' agents, channels and cron jobs in the beamclaw.yaml format; applying the output "
            "changes nothing. Secrets are written as ${BEAMCLAW_SECRET_...} references, never in clear.")

    def add_arguments(self, parser):
        parser.add_argument("--tenant", action="append", dest="tenants", metavar="SLUG",
                            help="Only this tenant (repeat for more); default: every tenant.")
        parser.add_argument("-o", "--output", help="Write to this file instead of standard output.")

    def handle(self, *args, tenants, output, **options):
        try:
            text = config_export(tenant_slugs=tenants)
        except ConfigInvalid as exc:
            raise CommandError("; ".join(error.message for error in exc.errors)) from None
        if output is None:
            self.stdout.write(text, ending="")
            return
        try:
            Path(output).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise CommandError(f"Cannot write {output}: {exc.strerror}.") from None
        self.stderr.write(f"Wrote {output}.")
