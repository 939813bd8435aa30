import psycopg
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from psycopg import sql


class Command(BaseCommand):
    help = "Create the Postgres database named by DATABASE_URL if it does not exist yet."
    requires_system_checks = []

    def handle(self, *args, **options):
        db = settings.DATABASES["default"]
        params = {k: v for k, v in {
            "host": db.get("HOST") or None,
            "port": db.get("PORT") or None,
            "user": db.get("USER") or None,
            "password": db.get("PASSWORD") or None,
        }.items() if v}
        name = db["NAME"]
        try:
            with psycopg.connect(dbname="postgres", autocommit=True, **params) as conn:
                exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
                if not exists:
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
                    self.stdout.write(f"Created database {name}.")
        except psycopg.Error as exc:
            raise CommandError(
                f"Cannot reach Postgres to create database '{name}': {exc}. Check DATABASE_URL and that Postgres is running."
            )
