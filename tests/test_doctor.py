"""`manage.py doctor` run as an operator runs it: a process of its own, against the live test stack (the
real worker, Redis, PostgreSQL; the fake model and the fake Discord for the outside services), and against
stores that are down or a database that is missing or not migrated."""

import os
import re
import subprocess
import sys
import uuid

import psycopg
import pytest
from django.conf import settings
from psycopg import sql

from beamclaw_project.infra.heartbeats import BEAT_KEY
from beamclaw_project.infra.redis import redis_client
from channels_app import accounts
from channels_app.models import ChannelAccount
from tests.channels.discord_world import FakeDiscord
from tests.conftest import ROOT, wait_until
from tests.procs import Process

# A hang guard, not a measurement: every check has a timeout of a few seconds.
DOCTOR_TIMEOUT_SECONDS = 60


def doctor(env: dict) -> tuple[int, list[str]]:
    done = subprocess.run(
        [sys.executable, "manage.py", "doctor", "--no-color"], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=DOCTOR_TIMEOUT_SECONDS,
    )
    return done.returncode, done.stdout.splitlines()


def line(lines: list[str], what: str) -> str:
    return next(text for text in lines if text[5:].startswith(f"{what}:"))


def fix_after(lines: list[str], what: str) -> str:
    following = lines[lines.index(line(lines, what)) + 1]
    assert following.startswith("     fix: "), following
    return following.removeprefix("     fix: ")


@pytest.fixture
def discord_bot(fake_discord, tenant):
    """This test's bot, the only enabled one while it runs: earlier tests of this process leave bots behind,
    some with tokens made up to be refused, and doctor checks every enabled bot."""
    bot = FakeDiscord(fake_discord).bot()
    account = accounts.channel_account_create(
        tenant=tenant.tenant, kind="discord", name=f"bot-{uuid.uuid4().hex[:6]}", agent=tenant.agent, secret=bot["token"],
    )
    others = list(ChannelAccount.objects.filter(kind="discord", enabled=True).exclude(pk=account.pk).values_list("pk", flat=True))
    ChannelAccount.objects.filter(pk__in=others).update(enabled=False)
    yield account
    ChannelAccount.objects.filter(pk__in=others).update(enabled=True)
    account.delete()


def test_the_live_stack_is_healthy(live, service_env, discord_bot):
    code, lines = doctor(service_env)
    # Only what this host lacks may fail: the sandbox's lines are the host's (exec cannot run without bwrap).
    failed = [text for text in lines if text.startswith("FAIL")]
    assert all(text.startswith(("FAIL exec sandbox:", "FAIL workspace filesystem:")) for text in failed), failed
    assert code == (1 if failed else 0), "\n".join(lines)
    for what in ("PostgreSQL", "Redis", "migrations", "workers", "model key", "Discord tokens"):
        assert line(lines, what).startswith("ok"), line(lines, what)
    # The suite's stack runs no beat of its own (an earlier test's may still be alive): without one, fine while
    # no cron job is enabled, a WARN (with its fix) once one is.
    assert line(lines, "beat").startswith(("ok   beat: ", "WARN beat: not running")), line(lines, "beat")
    assert "accepts ANTHROPIC_API_KEY" in line(lines, "model key")
    assert "1 of 1 bot tokens accepted" in line(lines, "Discord tokens")
    # Earlier tests of this process may have left workers of their own behind, alive for a few seconds more.
    assert re.match(r"ok   workers: \d+ live: ", line(lines, "workers")), line(lines, "workers")
    assert lines[-1].startswith(f"{len(failed)} failed")


def test_beat_is_seen_running_by_its_heartbeat(live, service_env, log_dir, tmp_path):
    name = f"doctor-beat-{uuid.uuid4().hex[:4]}"
    argv = [sys.executable, "-m", "celery", "-A", "beamclaw_project", "--quiet", "beat", "-S", "cron.scheduler:CronScheduler",
            "--schedule", str(tmp_path / "schedule"), "--pidfile", str(tmp_path / "pid")]
    beat = Process(name, argv, service_env, log_dir).start()
    try:
        wait_until(lambda: redis_client().exists(BEAT_KEY), timeout=60, message="beat's first heartbeat")
        code, lines = doctor(service_env)
    finally:
        beat.stop()
        redis_client().delete(BEAT_KEY)  # its heartbeat would outlive it by up to BEAT_TTL_SECONDS
    assert line(lines, "beat").startswith("ok   beat: running ("), line(lines, "beat")


def test_a_refused_model_key_and_bot_token_fail_with_their_fix(live, service_env, tenant):
    bad = accounts.channel_account_create(
        tenant=tenant.tenant, kind="discord", name="bad", agent=tenant.agent, secret="not-a-registered-token",
    )
    bad_id = bad.pk
    try:
        code, lines = doctor({**service_env, "ANTHROPIC_API_KEY": "bad-key"})
    finally:
        bad.delete()
    assert code == 1
    assert line(lines, "model key").startswith("FAIL") and "refused ANTHROPIC_API_KEY" in line(lines, "model key")
    assert "set ANTHROPIC_API_KEY to a valid key" in fix_after(lines, "model key")
    what = f"Discord account {tenant.tenant.slug}/bad"
    assert line(lines, what) == f"FAIL {what}: Discord refused the bot token (401)"
    assert f"PATCH /api/channels/{bad_id}/" in fix_after(lines, what)


def test_unreachable_stores_fail_with_their_fix():
    env = {**os.environ, "DATABASE_URL": "postgres://nobody@127.0.0.1:1/beamclaw", "REDIS_URL": "redis://127.0.0.1:1/0"}
    code, lines = doctor(env)
    assert code == 1
    assert line(lines, "PostgreSQL").startswith("FAIL PostgreSQL: cannot reach database 'beamclaw' on 127.0.0.1")
    assert fix_after(lines, "PostgreSQL").startswith("make services")
    assert line(lines, "Redis").startswith("FAIL Redis: cannot reach REDIS_URL")
    assert "set REDIS_URL to a reachable server" in fix_after(lines, "Redis")
    assert line(lines, "workers") == "WARN workers: not checked: Redis is unreachable"
    assert line(lines, "migrations") == "WARN migrations: not checked: PostgreSQL is unreachable"


def test_a_missing_then_unmigrated_database_says_what_to_run():
    name = f"{settings.DATABASES['default']['NAME']}_doctor"
    base = settings.DATABASES["default"]
    env = {**os.environ, "DATABASE_URL": os.environ["DATABASE_URL"].rsplit("/", 1)[0] + f"/{name}"}
    params = {k: v for k, v in {"host": base.get("HOST"), "port": base.get("PORT"), "user": base.get("USER"),
                                "password": base.get("PASSWORD")}.items() if v}
    with psycopg.connect(dbname="postgres", autocommit=True, **params) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
        code, lines = doctor(env)
        assert code == 1
        assert line(lines, "PostgreSQL").startswith("FAIL PostgreSQL: the server answers, but database")
        assert line(lines, "PostgreSQL").endswith("does not exist")
        assert fix_after(lines, "PostgreSQL") == "python manage.py ensure_database && python manage.py migrate"

        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            code, lines = doctor(env)
        finally:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
    assert code == 1
    assert line(lines, "PostgreSQL").startswith("ok")
    assert line(lines, "migrations").startswith("FAIL migrations: ") and "not applied: " in line(lines, "migrations")
    assert fix_after(lines, "migrations") == "python manage.py migrate"
    assert line(lines, "beat") == "WARN beat: not checked: the database is unreachable or not migrated"
