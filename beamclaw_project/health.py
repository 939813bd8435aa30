"""GET /health: is every dependency of a run reachable? 503 when one is not."""

import asyncio
import time

from django.db import connection
from django.http import JsonResponse

from beamclaw_project.asyncdb import db_call
from beamclaw_project.infra.heartbeats import live_nodes
from beamclaw_project.infra.redis import async_redis

STARTED_AT = time.monotonic()
CHECK_TIMEOUT_SECONDS = 3


@db_call
def _check_database() -> dict:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return {"ok": True}


async def _check(fn) -> dict:
    try:
        return await asyncio.wait_for(fn(), CHECK_TIMEOUT_SECONDS)
    except TimeoutError:
        return {"ok": False, "error": f"no answer within {CHECK_TIMEOUT_SECONDS}s"}
    except Exception as exc:  # noqa: BLE001 - any failure of a dependency is reported, not raised
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}


async def _check_redis() -> dict:
    await async_redis().ping()
    return {"ok": True}


async def _check_workers() -> dict:
    names = await live_nodes()
    if not names:
        return {"ok": False, "count": 0, "error": "No worker is running: start one with `python manage.py worker`."}
    return {"ok": True, "count": len(names), "names": sorted(names)}


async def health_report() -> dict:
    database, redis = await asyncio.gather(_check(_check_database), _check(_check_redis))
    checks = {"database": database, "redis": redis}
    checks["workers"] = await _check(_check_workers) if checks["redis"]["ok"] else {"ok": False, "error": "Redis is unreachable."}
    healthy = all(check["ok"] for check in checks.values())
    return {"status": "ok" if healthy else "degraded", "checks": checks, "uptime_seconds": int(time.monotonic() - STARTED_AT)}


async def health(request):
    report = await health_report()
    return JsonResponse(report, status=200 if report["status"] == "ok" else 503)
