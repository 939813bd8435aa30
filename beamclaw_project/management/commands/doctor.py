"""`manage.py doctor`: is everything a run needs here, and if not, what to run to fix it.

One line per check, `ok`, `WARN` or `FAIL`, and under each problem the command that fixes it. Exit status 1
when a check FAILs (something does not work: runs, tools or channels would fail), else 0; a WARN is a
weaker guarantee or a helper that is missing (beat, the sandbox's cgroups), reported without failing, so a
deployment script can stop on `doctor` without being stopped by a host that only lacks cgroups.

Every check that talks to something over the network has a short timeout of its own (CHECK_TIMEOUT_SECONDS):
a down Redis or an unroutable DATABASE_URL makes a FAIL line within seconds, never a hang. Checks that need
the database are not run when it is unreachable (they say so).

Beat writes a heartbeat (cron/scheduler.py); without one, cron jobs still fire, a few seconds late, from
the workers' sweeper: a WARN when jobs are enabled, fine while none is.

Run it where workers run, as their user: bubblewrap, cgroups and the workspace disk are per host.
"""

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import anthropic
import httpx
import psycopg
import redis
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from beamclaw_project.infra.heartbeats import BEAT_KEY, KEY_PREFIX
from channels_app.models import ChannelAccount
from cron.models import CronJob
from tools.sandbox import sandbox_report

CHECK_TIMEOUT_SECONDS = 3.0
# Cron occurrences looked at to tell whether beat woke them.
DISCORD_CHECKS_IN_PARALLEL = 8
START_BEAT = "celery -A beamclaw_project beat -S cron.scheduler:CronScheduler  (or `make run`, which starts it)"
START_WORKER = "python manage.py worker  (or `make run`, which starts web, workers and beat)"


@dataclass
class Check:
    status: str  # ok, WARN or FAIL
    what: str
    detail: str
    fix: str = ""


def ok(what: str, detail: str) -> Check:
    return Check("ok", what, detail)


def warn(what: str, detail: str, fix: str = "") -> Check:
    return Check("WARN", what, detail, fix)


def fail(what: str, detail: str, fix: str = "") -> Check:
    return Check("FAIL", what, detail, fix)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# --- stores ----------------------------------------------------------------------------------------------


def check_postgres() -> Check:
    db = settings.DATABASES["default"]
    where = f"database '{db['NAME']}' on {db.get('HOST') or 'the local socket'}"
    params = {k: v for k, v in {"host": db.get("HOST"), "port": db.get("PORT"), "user": db.get("USER"),
                                "password": db.get("PASSWORD")}.items() if v}
    try:
        with psycopg.connect(dbname=db["NAME"], connect_timeout=int(CHECK_TIMEOUT_SECONDS), **params) as conn:
            version = conn.execute("SHOW server_version").fetchone()[0]
    except psycopg.OperationalError as exc:
        if f'database "{db["NAME"]}" does not exist' in str(exc):
            return fail("PostgreSQL", f"the server answers, but {where} does not exist",
                        "python manage.py ensure_database && python manage.py migrate")
        return fail("PostgreSQL", f"cannot reach {where} (DATABASE_URL): {_first_line(exc)}",
                    "make services  (starts the local PostgreSQL; `sudo apt-get install -y postgresql` if it is "
                    "missing), or set DATABASE_URL to a reachable server")
    return ok("PostgreSQL", f"{where} answers (PostgreSQL {version})")


def _redis(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_connect_timeout=CHECK_TIMEOUT_SECONDS, socket_timeout=CHECK_TIMEOUT_SECONDS)


def check_redis(url: str, what: str, setting: str) -> Check:
    try:
        version = _redis(url).info("server")["redis_version"]
    except redis.RedisError as exc:
        return fail(what, f"cannot reach {setting}: {_first_line(exc)}",
                    "make services  (starts the local Redis; `sudo apt-get install -y redis-server` if it is "
                    f"missing), or set {setting} to a reachable server")
    return ok(what, f"{setting} answers (Redis {version})")


def check_migrations() -> Check:
    executor = MigrationExecutor(connection)
    plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    if plan:
        names = ", ".join(f"{m.app_label}.{m.name}" for m, _ in plan[:5]) + (" …" if len(plan) > 5 else "")
        return fail("migrations", f"{len(plan)} not applied: {names}", "python manage.py migrate")
    return ok("migrations", "all applied")


# --- processes ---------------------------------------------------------------------------------------------


def check_workers() -> Check:
    try:
        nodes = sorted(key.decode()[len(KEY_PREFIX):] for key in _redis(settings.REDIS_URL).scan_iter(f"{KEY_PREFIX}*"))
    except redis.RedisError as exc:
        return fail("workers", f"cannot read worker heartbeats from Redis: {_first_line(exc)}")
    if not nodes:
        return fail("workers", "no live worker (none wrote a heartbeat in the last few seconds): runs would wait", START_WORKER)
    return ok("workers", f"{len(nodes)} live: {', '.join(nodes[:5])}{' …' if len(nodes) > 5 else ''}")


def check_beat() -> Check:
    try:
        alive = _redis(settings.REDIS_URL).get(BEAT_KEY)
    except redis.RedisError as exc:
        return fail("beat", f"cannot read beat's heartbeat from Redis: {_first_line(exc)}")
    if alive is not None:
        return ok("beat", f"running ({alive.decode()})")
    if not CronJob.objects.filter(enabled=True).exists():
        return ok("beat", "not running; no cron job is enabled, so nothing waits for it yet")
    return warn(
        "beat", "not running (no heartbeat): enabled cron jobs fire only from the workers' sweeper, seconds late",
        START_BEAT,
    )


# --- the exec sandbox -------------------------------------------------------------------------------------

# What a failed line of tools.sandbox.sandbox_report means here: FAIL where exec cannot run at all.
SANDBOX_LINES = {
    "exec sandbox": ("FAIL", "sudo apt-get install -y bubblewrap  (scripts/ensure_sandbox_tools.sh; `make run` does it)"),
    "exec network (sandbox.network)": ("WARN", "sudo apt-get install -y slirp4netns iproute2 util-linux  (and run the "
                                               "worker as root for agents with sandbox.network)"),
    "workspace filesystem": ("FAIL", "free disk space (or inodes) under BEAMCLAW_WORKSPACE_ROOT"),
}


def check_sandbox() -> list[Check]:
    checks = []
    for what, good, detail in sandbox_report():
        status, fix = SANDBOX_LINES.get(what, ("WARN", ""))
        checks.append(ok(what, detail) if good else Check(status, what, detail, fix))
    return checks


# --- outside services ---------------------------------------------------------------------------------------


def check_model_key() -> Check:
    """One message of one token through the SDK (which reads ANTHROPIC_BASE_URL): a cent's fraction, and the
    only call that proves both the key and the default model."""
    key = os.environ.get("ANTHROPIC_API_KEY")
    if not key:
        return ok("model key", "ANTHROPIC_API_KEY is not set (not checked): agents need their own api_key, or "
                               "`make run` starts the bundled fake model")
    model = settings.BEAMCLAW["DEFAULT_MODEL"]
    base_url = os.environ.get("ANTHROPIC_BASE_URL") or "the Anthropic API"
    client = anthropic.Anthropic(api_key=key, max_retries=0, timeout=CHECK_TIMEOUT_SECONDS * 2)
    try:
        client.messages.create(model=model, max_tokens=1, messages=[{"role": "user", "content": "ping"}])
    except anthropic.AuthenticationError as exc:
        return fail("model key", f"{base_url} refused ANTHROPIC_API_KEY: {exc.message}",
                    "set ANTHROPIC_API_KEY to a valid key in the environment of the web and worker processes")
    except anthropic.NotFoundError as exc:
        return fail("model key", f"the key works, but model '{model}' is unknown: {exc.message}",
                    "set BEAMCLAW_DEFAULT_MODEL to a model the key may use")
    except anthropic.APIStatusError as exc:
        return warn("model key", f"{base_url} answered {exc.status_code} ({exc.message}): the key could not be "
                                 "confirmed right now", "python manage.py doctor  (again in a minute)")
    except anthropic.APIConnectionError as exc:
        return fail("model key", f"cannot reach {base_url}: {_first_line(exc)}",
                    "check network access, or ANTHROPIC_BASE_URL")
    return ok("model key", f"{base_url} accepts ANTHROPIC_API_KEY (model {model})")


def _discord_check(client: httpx.Client, account) -> Check | None:
    """None when the token is accepted, else the account's problem."""
    what = f"Discord account {account.tenant.slug}/{account.name}"
    fix = (f"give the account a valid bot token: PATCH /api/channels/{account.pk}/ {{\"token\": \"<bot token>\"}} "
           "(or the admin)")
    try:
        response = client.get("/users/@me", headers={"Authorization": f"Bot {account.secret}"})
    except httpx.HTTPError as exc:
        return fail(what, f"cannot reach DISCORD_API_BASE_URL: {type(exc).__name__}", "check network access, or DISCORD_API_BASE_URL")
    if response.status_code == 401:
        return fail(what, "Discord refused the bot token (401)", fix)
    if response.status_code != 200:
        return warn(what, f"Discord answered {response.status_code}; the token could not be confirmed", "python manage.py doctor  (again in a minute)")
    return None


def check_discord() -> list[Check]:
    accounts = list(ChannelAccount.objects.filter(kind=ChannelAccount.Kind.DISCORD, enabled=True).select_related("tenant"))
    if not accounts:
        return [ok("Discord tokens", "no enabled Discord account")]
    with (
        httpx.Client(base_url=settings.DISCORD_API_BASE_URL, timeout=CHECK_TIMEOUT_SECONDS) as client,
        ThreadPoolExecutor(DISCORD_CHECKS_IN_PARALLEL) as pool,
    ):
        problems = [p for p in pool.map(lambda account: _discord_check(client, account), accounts) if p is not None]
    accepted = len(accounts) - len(problems)
    return [ok("Discord tokens", f"{accepted} of {len(accounts)} bot tokens accepted by Discord"), *problems]


# --- the report -------------------------------------------------------------------------------------------


def doctor_checks():
    """Each check as it completes, in the order of the report."""
    database = check_postgres()
    yield database
    redis_check = check_redis(settings.REDIS_URL, "Redis", "REDIS_URL")
    yield redis_check
    if settings.CELERY_BROKER_URL != settings.REDIS_URL:
        yield check_redis(settings.CELERY_BROKER_URL, "Celery broker", "CELERY_BROKER_URL")
    migrations = check_migrations() if database.status == "ok" else warn("migrations", "not checked: PostgreSQL is unreachable")
    yield migrations
    yield check_workers() if redis_check.status == "ok" else warn("workers", "not checked: Redis is unreachable")
    # Beat's and Discord's checks read tables that only an up-to-date schema is sure to have.
    schema = "" if migrations.status == "ok" else "not checked: the database is unreachable or not migrated"
    if schema or redis_check.status != "ok":
        yield warn("beat", schema or "not checked: Redis is unreachable")
    else:
        yield check_beat()
    yield from check_sandbox()
    yield check_model_key()
    yield from [warn("Discord tokens", schema)] if schema else check_discord()


class Command(BaseCommand):
    help = (
        "Check PostgreSQL, Redis, migrations, workers, beat, the exec sandbox, the model key and channel tokens; "
        "each problem comes with the command that fixes it. Exits 1 when a check FAILs."
    )
    # The system checks would touch the database before the first line, and hang or fail without one.
    requires_system_checks = []

    def handle(self, *args, **options):
        marks = {"ok": self.style.SUCCESS("ok  "), "WARN": self.style.WARNING("WARN"), "FAIL": self.style.ERROR("FAIL")}
        counts = {"ok": 0, "WARN": 0, "FAIL": 0}
        for check in doctor_checks():
            counts[check.status] += 1
            self.stdout.write(f"{marks[check.status]} {check.what}: {check.detail}")
            if check.fix:
                self.stdout.write(f"     fix: {check.fix}")
        self.stdout.write(f"{counts['FAIL']} failed, {counts['WARN']} warnings, {counts['ok']} ok")
        if counts["FAIL"]:
            raise CommandError("something is wrong: see the FAIL lines above and the command under each", returncode=1)
