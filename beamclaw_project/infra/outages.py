"""Telling an outage of Redis or PostgreSQL from a bug.

Work that fails because a store is unreachable is not broken: it is paused, and resumed once the store
is back (by the reapers, from Postgres). Edges answer 503 with Retry-After during an outage instead of
a 500. What counts as an outage: a lost or refused connection, a timeout, the server shutting down or
starting up, the connection pool finding no connection in time. A deadlock or a serialization failure
is an ordinary database error, not an outage.
"""

import psycopg
import redis
from django.db import InterfaceError as DjangoInterfaceError
from django.db import OperationalError as DjangoOperationalError

# What clients are told to wait before trying again during an outage (seconds).
RETRY_AFTER_SECONDS = 5

# SQLSTATE classes and codes of a database that is gone or not accepting work: connection exceptions
# (08xxx), admin shutdown, crash shutdown, cannot connect now (starting up or shutting down).
_DB_OUTAGE_SQLSTATES = ("57P01", "57P02", "57P03")


def _is_db_outage(exc: BaseException) -> bool:
    if isinstance(exc, (DjangoInterfaceError, psycopg.InterfaceError)):
        return True
    if isinstance(exc, psycopg.OperationalError):
        state = exc.sqlstate
        # No SQLSTATE: the client side failed (connection refused or lost, pool timeout).
        return state is None or state.startswith("08") or state in _DB_OUTAGE_SQLSTATES
    return False


def _is_redis_outage(exc: BaseException) -> bool:
    return isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError))


def outage_of(exc: BaseException | None) -> str | None:
    """"Redis" or "PostgreSQL" when `exc` (or an exception it was raised from) is an outage of that
    store, else None. Django wraps psycopg's errors, so the chain is followed to the driver's."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if _is_redis_outage(exc):
            return "Redis"
        if _is_db_outage(exc):
            return "PostgreSQL"
        if isinstance(exc, DjangoOperationalError) and exc.__cause__ is None:
            # Raised by Django itself rather than wrapped from the driver (e.g. "the connection is closed").
            return "PostgreSQL"
        exc = exc.__cause__ or exc.__context__
    return None
