"""The fault suite's stack: a Redis and a PostgreSQL of its own, which the tests restart and stop, with a
real worker fleet and Daphne on top. The shared services the rest of the suite uses are never touched.

Every process runs with the production timing settings; recovery after Redis or PostgreSQL comes back
is the reapers' ordinary housekeeping tick, not a shortened lease.

The test process reads the stack's database with plain psycopg (its Django connection belongs to the
shared test database) and talks to the stack over HTTP and WebSocket, as a client would.
"""

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
import pytest
import redis

from tests.conftest import WEBHOOK_HOST, start_daphne, wait_until
from tests.procs import Process, free_port

ROOT = Path(__file__).resolve().parents[2]
PG_BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)), None)


class OwnRedis:
    """A Redis that keeps nothing on disk: restarting it empties it, as a failover or a restart without
    persistence does."""

    def __init__(self, log_dir: Path):
        self.port = free_port()
        self.log_dir = log_dir
        self.proc: Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5)

    def start(self) -> None:
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.proc = Process(f"redis-{self.port}", argv, dict(os.environ), self.log_dir).start()
        wait_until(self._up, timeout=20, message="the fault suite's Redis")

    def _up(self) -> bool:
        try:
            return self.client().ping()
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()

    def restart_empty(self) -> None:
        self.stop()
        self.start()


class OwnPostgres:
    """A PostgreSQL cluster in a temporary folder, on a port of its own. As root, it runs as the
    `postgres` user (PostgreSQL refuses to run as root)."""

    def __init__(self, base: Path):
        if PG_BIN is None:
            pytest.skip("PostgreSQL server binaries are not installed")
        self.port = free_port()
        self.data = base / "pgdata"
        self.socket_dir = base
        self.log = base / "postgres.log"
        self.user = "postgres" if os.geteuid() == 0 else None
        if self.user:
            owner = pwd.getpwnam(self.user)
            os.chown(base, owner.pw_uid, owner.pw_gid)

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/beamclaw_faults"

    def _run(self, *argv: str) -> None:
        command = [str(PG_BIN / argv[0]), *argv[1:]]
        if self.user:
            command = ["runuser", "-u", self.user, "--", *command]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, timeout=120)

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.log), "-w", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def connect(self) -> psycopg.Connection:
        return psycopg.connect(self.url.replace("postgres://", "postgresql://"), autocommit=True)


@dataclass
class Stack:
    redis: OwnRedis
    postgres: OwnPostgres
    env: dict
    log_dir: Path
    web_url: str = ""
    web: Process | None = None
    workers: list[Process] = field(default_factory=list)

    def manage(self, *argv: str) -> str:
        result = subprocess.run(
            [sys.executable, "manage.py", *argv], cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=120
        )
        if result.returncode:
            raise RuntimeError(f"manage.py {' '.join(argv)} failed: {result.stderr[-2000:]}")
        return result.stdout

    def start_web(self) -> Process:
        self.web, self.web_url = start_daphne(f"fault-web-{uuid.uuid4().hex[:4]}", self.env, self.log_dir)
        return self.web

    def start_worker(self, name: str | None = None) -> Process:
        name = name or f"fault-{uuid.uuid4().hex[:6]}"
        argv = [sys.executable, "manage.py", "worker", "-c", "20", "-n", f"{name}@%h", "-l", "INFO"]
        proc = Process(name, argv, self.env, self.log_dir).start()
        self.workers.append(proc)
        return proc

    def health(self) -> dict | None:
        try:
            return httpx.get(f"{self.web_url}/health", timeout=10).json()
        except (httpx.HTTPError, ValueError):
            return None

    def healthy(self) -> bool:
        report = self.health()
        return bool(report) and report["status"] == "ok"

    def tenant(self) -> "Tenant":
        slug = f"f-{uuid.uuid4().hex[:8]}"
        created = json.loads(self.manage("create_tenant", slug))
        return Tenant(slug=slug, api_key=created["api_key"], agent=created["agent"])

    def query(self, sql: str, *params) -> list[tuple]:
        with self.postgres.connect() as conn:
            return conn.execute(sql, params).fetchall()


@dataclass
class Tenant:
    slug: str
    api_key: str
    agent: str

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.api_key}"}


@pytest.fixture(scope="module")
def stack(fake_llm, log_dir):
    # Not under pytest's temporary folder: its parents are private to this user, and the cluster runs as
    # `postgres` when the suite runs as root.
    base = Path(tempfile.mkdtemp(prefix="beamclaw-faults-"))
    own_redis = OwnRedis(log_dir)
    own_redis.start()
    postgres = OwnPostgres(base)
    postgres.init()
    postgres.start()
    env = dict(os.environ)
    env.update(
        DATABASE_URL=postgres.url, REDIS_URL=own_redis.url, ANTHROPIC_BASE_URL=fake_llm,
        ANTHROPIC_API_KEY="test-key", PYTHONUNBUFFERED="1",
        # Webhook receivers of the fault tests listen here (outbound requests to loopback are refused).
        BEAMCLAW_OUTBOUND_ALLOW_CIDRS=f"{WEBHOOK_HOST}/32",
    )
    env.pop("CELERY_BROKER_URL", None)
    stack = Stack(redis=own_redis, postgres=postgres, env=env, log_dir=log_dir)
    stack.manage("ensure_database")
    stack.manage("migrate", "--noinput", "-v", "0")
    stack.start_web()
    stack.start_worker()
    wait_until(stack.healthy, timeout=60, message="the fault stack to be healthy")
    yield stack
    for proc in [*stack.workers, stack.web]:
        if proc is not None:
            proc.stop()
    try:
        postgres.stop()
    except subprocess.CalledProcessError:
        pass
    own_redis.stop()
    if postgres.log.exists():
        shutil.copy(postgres.log, log_dir / "fault-postgres.log")
    shutil.rmtree(base, ignore_errors=True)


def seconds_until(predicate, *, timeout: float, message: str) -> float:
    """How long it took for predicate() to hold (a figure for the report, never asserted)."""
    started = time.monotonic()
    wait_until(predicate, timeout=timeout, interval=0.2, message=message)
    return time.monotonic() - started
