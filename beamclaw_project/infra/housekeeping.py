"""The housekeeping registry: periodic chores every worker process runs on its housekeeping thread
(every BEAMCLAW_HOUSEKEEPING_SECONDS). Apps register their chores in AppConfig.ready(); the worker
runs them in registration order, each isolated so one failing chore never starves the others.

Chores must be safe to run on every worker at once (they claim work with leases or row locks); a
chore that should run once per fleet per period says so with `every_seconds` and is throttled by a
Redis key.
"""

import logging
from dataclasses import dataclass
from typing import Callable

from beamclaw_project.infra.log_context import log_context_reset, log_context_restore
from beamclaw_project.infra.outages import outage_of
from beamclaw_project.infra.redis import redis_client

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Chore:
    name: str
    run: Callable[[], object]
    every_seconds: int | None = None  # at most once per this period across the fleet


_CHORES: dict[str, Chore] = {}


def register(name: str, run: Callable[[], object], *, every_seconds: int | None = None) -> None:
    _CHORES[name] = Chore(name=name, run=run, every_seconds=every_seconds)


def chores() -> list[Chore]:
    return list(_CHORES.values())


def run_chores(*, node: str) -> None:
    for chore in chores():
        token = log_context_reset()  # what one chore binds must not label the next one's lines
        try:
            if chore.every_seconds and not redis_client().set(
                f"bc:housekeeping:{chore.name}", node, nx=True, ex=chore.every_seconds
            ):
                continue
            chore.run()
        except Exception as exc:  # noqa: BLE001 - one failing chore must not starve the others
            if outage_of(exc) is not None:
                raise  # Redis or PostgreSQL is down: the other chores would only wait on it in turn
            logger.exception("housekeeping chore %s failed", chore.name)
        finally:
            log_context_restore(token)
