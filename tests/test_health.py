"""GET /health reports each dependency and answers 503 when one a run needs is down."""

import os
import sys

import httpx
import pytest

from tests.conftest import Process, free_port, wait_until


def test_health_ok_with_a_worker(live):
    response = httpx.get(f"{live}/health", timeout=10)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["checks"]["database"]["ok"] and body["checks"]["redis"]["ok"]
    assert body["checks"]["workers"]["count"] >= 1
    assert isinstance(body["uptime_seconds"], int)


@pytest.fixture
def gateway_with(service_env, log_dir):
    """Start an extra Daphne with some settings overridden; yields a function returning its URL."""
    started: list[Process] = []

    def start(**overrides) -> str:
        port = free_port()
        argv = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "beamclaw_project.asgi:application"]
        proc = Process(f"daphne-{port}", argv, {**service_env, **overrides}, log_dir).start()
        started.append(proc)
        url = f"http://127.0.0.1:{port}"

        def answering():
            try:
                return httpx.get(f"{url}/health", timeout=5)
            except httpx.HTTPError:
                return None

        wait_until(answering, timeout=30, message="the extra Daphne")
        return url

    yield start
    for proc in started:
        # A gateway stuck connecting to a dead database would take its pool timeout to exit.
        proc.stop(timeout=3)


def _empty_redis_url() -> str:
    """A database of the test Redis server that holds nothing right now (so no worker announces itself
    there), chosen at run time: other suites and `make run` may use any fixed one."""
    import redis

    server = redis.Redis.from_url(os.environ["REDIS_URL"])
    host, port = server.connection_pool.connection_kwargs["host"], server.connection_pool.connection_kwargs["port"]
    count = int(server.config_get("databases").get("databases", 16))
    for db in range(count - 1, -1, -1):
        if redis.Redis(host=host, port=port, db=db).dbsize() == 0:
            return f"redis://{host}:{port}/{db}"
    pytest.skip("every Redis database holds data; none can play a fleet without workers")


def test_health_503_when_no_worker_is_running(worker, gateway_with):
    # A Redis database no worker announces itself in: as if every worker were gone.
    url = gateway_with(REDIS_URL=_empty_redis_url())
    response = httpx.get(f"{url}/health", timeout=10)
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "degraded"
    assert body["checks"]["database"]["ok"] and body["checks"]["redis"]["ok"]
    assert not body["checks"]["workers"]["ok"]
    assert "manage.py worker" in body["checks"]["workers"]["error"]


def test_health_503_when_postgres_and_redis_are_unreachable(gateway_with):
    dead_port = free_port()
    url = gateway_with(
        DATABASE_URL=f"postgres://nobody@127.0.0.1:{dead_port}/nothing", REDIS_URL=f"redis://127.0.0.1:{dead_port}/0"
    )
    response = httpx.get(f"{url}/health", timeout=30)
    assert response.status_code == 503
    checks = response.json()["checks"]
    assert not checks["database"]["ok"] and "error" in checks["database"]
    assert not checks["redis"]["ok"] and not checks["workers"]["ok"]
