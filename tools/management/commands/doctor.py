"""`manage.py doctor`: what this worker host can enforce for the exec sandbox, and what it falls back to.

Run it where workers run (as the same user): cgroups, bubblewrap and the workspace disk are per host.
Exits 1 when a check fails, so deployment scripts can stop on it.
"""

from django.core.management.base import BaseCommand, CommandError

from tools.sandbox import sandbox_report


class Command(BaseCommand):
    help = "Report what bounds exec sandboxes on this host (bubblewrap, cgroups or rlimit fallback, disk caps)."

    def handle(self, *args, **options):
        failed = False
        for check, ok, detail in sandbox_report():
            failed |= not ok
            mark = self.style.SUCCESS("ok  ") if ok else self.style.WARNING("WARN")
            self.stdout.write(f"{mark} {check}: {detail}")
        if failed:
            raise CommandError("some checks need attention (see WARN lines)", returncode=1)
