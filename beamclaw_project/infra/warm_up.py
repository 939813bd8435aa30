"""The connections a process's first request or step would open, opened as the process starts instead.

After `make run`, the first request paid for the database pool (it is built, and its first connection
made, at first use: a new PostgreSQL backend) and for a Redis connection: ~15 ms of its time to first token;
each worker's first step paid for its own. Opened on the side, so that a store that is down delays nothing:
the first request then connects, or reports the outage, as it would have.
"""

import logging
import threading

from django.db import connection

from beamclaw_project.infra.redis import redis_client

logger = logging.getLogger(__name__)


def connections_warm_up() -> None:
    threading.Thread(target=_connect, name="connections-warm-up", daemon=True).start()


def _connect() -> None:
    try:
        connection.ensure_connection()  # (builds the pool, which keeps the connection when it is given back)
    except Exception as exc:  # noqa: BLE001 - only a head start
        logger.info("could not connect to PostgreSQL at start-up (%r); the first request connects", exc)
    finally:
        connection.close()
    try:
        redis_client().ping()
    except Exception as exc:  # noqa: BLE001 - only a head start
        logger.info("could not connect to Redis at start-up (%r); the first request connects", exc)
