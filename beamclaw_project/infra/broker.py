"""The Celery broker transport: kombu's Redis transport with a fix for reconnecting after Redis restarts.

kombu 5.7 (and every release since 3.0, celery/kombu#582) can kill a worker when Redis goes away: once a
connection is closed its transport forgets the broker address (`Transport.client = None`), yet closing
a channel afterwards still builds a new Redis pool to give unacknowledged messages back, and reading
the address from the forgotten client raises `AttributeError: 'NoneType' object has no attribute
'hostname'`. That is not one of the transport's connection errors, so the consumer does not reconnect:
the worker logs "Unrecoverable error" and exits (or, in a task thread acknowledging a message, fails
that thread).

Here the same situation raises redis-py's ConnectionError, which kombu treats as what it is: a lost
connection, to be retried with backoff. Nothing is lost by not restoring those messages from a closed
connection: Redis keeps unacknowledged messages and gives them back after the visibility timeout,
and the engine's reapers resume any run or tool call whose task went missing (Postgres is the source
of truth).

Selected with CELERY_BROKER_TRANSPORT (settings.py); the broker URL stays a plain redis:// URL.
"""

import redis
from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    def _connparams(self, asynchronous=False):
        if self.connection.client is None:
            raise redis.exceptions.ConnectionError("the broker connection was closed; reconnecting")
        return super()._connparams(asynchronous=asynchronous)


class Transport(kombu_redis.Transport):
    Channel = Channel
