"""`manage.py apply_config FILE [--dry-run] [--prune] [--watch]`: make the database match beamclaw.yaml
(tenants/config_file.py; docs/config.md)."""

import time
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError, close_old_connections

from tenants.config_file import ConfigInvalid, config_apply, config_digest, config_parse, config_plan

# --watch looks at the file this often: an edit is live within about a second.
WATCH_INTERVAL_SECONDS = 1.0


class Command(BaseCommand):
    help = ("Validate a beamclaw.yaml, print the plan (create / update / delete) and apply it in one transaction. "
            "Nothing is changed when the file has any error.")

    def add_arguments(self, parser):
        parser.add_argument("file", help="The configuration file (docs/config.md).")
        parser.add_argument("--dry-run", action="store_true", help="Validate and print the plan; change nothing.")
        parser.add_argument(
            "--prune", action="store_true",
            help="Also delete the agents, channels and cron jobs of the file's tenants that the file does not name.",
        )
        parser.add_argument(
            "--watch", action="store_true",
            help="Keep running and apply the file again whenever it changes (a bad edit is reported and ignored).",
        )

    def handle(self, *args, file, dry_run, prune, watch, **options):
        path = Path(file)
        if not watch:
            text = self._read(path)
            if not self._cycle(path, text, dry_run=dry_run, prune=prune):
                raise CommandError(f"{path.name} was not applied; fix the errors above and run again.")
            return
        self.stdout.write(f"Watching {path} (Ctrl-C to stop).")
        last = None
        try:
            while True:
                try:
                    text = path.read_bytes()
                except OSError as exc:
                    text = None
                    if last != "missing":
                        self.stderr.write(f"Cannot read {path}: {exc.strerror}; waiting for it.")
                        last = "missing"
                if text is not None and (digest := config_digest(text)) != last:
                    last = digest
                    close_old_connections()
                    self.stdout.write(f"[{time.strftime('%H:%M:%S')}] {path.name} changed.")
                    if self._cycle(path, text.decode("utf-8", errors="replace"), dry_run=dry_run, prune=prune) is None:
                        last = None  # the database failed, not the file: try again at the next look
                    self.stdout.flush()
                time.sleep(WATCH_INTERVAL_SECONDS)
        except KeyboardInterrupt:
            self.stdout.write("Stopped watching.")

    def _read(self, path: Path) -> str:
        try:
            return path.read_text(encoding="utf-8")
        except OSError as exc:
            raise CommandError(f"Cannot read {path}: {exc.strerror}.") from None
        except UnicodeDecodeError:
            raise CommandError(f"{path} is not UTF-8 text.") from None

    def _cycle(self, path: Path, text: str, *, dry_run: bool, prune: bool) -> bool | None:
        """Validate, plan and (unless dry_run) apply: True when it went through, False when the file was
        refused, None when the database could not be reached or refused the change."""
        try:
            desired = config_parse(text=text, filename=path.name)
            for warning in desired.warnings:
                self.stderr.write(f"warning: {warning.render(path.name)}")
            plan = config_plan(desired=desired, prune=prune) if dry_run else config_apply(desired=desired, prune=prune)
        except ConfigInvalid as exc:
            for error in exc.errors:
                self.stderr.write(error.render(path.name))
            self.stderr.write(f"{len(exc.errors)} error(s); nothing was changed.")
            return False
        except DatabaseError as exc:
            self.stderr.write(f"The database failed, so nothing was changed: {exc}")
            return None
        if plan.errors:  # a dry run reports what applying would refuse
            for error in plan.errors:
                self.stderr.write(error.render(path.name))
            self.stderr.write(f"{len(plan.errors)} error(s); applying would change nothing.")
            return False
        self.stdout.write(f"Plan for {path.name}{' (dry run: nothing changed)' if dry_run else ''}:")
        self.stdout.write(plan.render())
        if plan.changes and not dry_run:
            self.stdout.write(self.style.SUCCESS("Applied."))
        return True
