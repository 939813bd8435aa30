"""The Celery broker transport: kombu's Redis transport with two fixes, for Redis restarts and for workers
killed with messages in hand.

Reconnecting. kombu 5.7 (and every release since 3.0, celery/kombu#582) can kill a worker when Redis goes
away: once a connection is closed its transport forgets the broker address (`Transport.client = None`),
yet closing a channel afterwards still builds a new Redis pool to give unacknowledged messages back, and
reading the address from the forgotten client raises `AttributeError: 'NoneType' object has no attribute
'hostname'`. That is not one of the transport's connection errors, so the consumer does not reconnect:
the worker logs "Unrecoverable error" and exits (or, in a task thread acknowledging a message, fails
that thread). Here the same situation raises redis-py's ConnectionError, which kombu treats as what it
is: a lost connection, to be retried with backoff. Nothing is lost by not restoring those messages from a
closed connection: Redis keeps unacknowledged messages (see below), and the engine's reapers resume any
run or tool call whose task went missing (Postgres is the source of truth).

Messages of a dead worker. kombu emulates acknowledgements on Redis: a fetched message waits in the
`unacked` hash until the worker acknowledges it, and any consumer puts it back in its queue once it is
older than the visibility timeout (an hour, CELERY_VISIBILITY_TIMEOUT: it must outlast the longest
countdown, or a retry due later would be handed out twice). A worker SIGKILLed with messages fetched but
not finished (a step waiting for a thread, a tool call, a webhook retry counting down) would leave them
there for that hour. So each message is recorded with its owner, the fetching worker's node name and
process incarnation (`unacked_owner`, written in the same transaction as kombu's own record), and every
worker's housekeeping gives back the messages of owners whose heartbeat is gone or belongs to a newer
process of the same name (`orphans_restore`). A worker that is merely slow keeps its heartbeat, so its
messages stay where they are; if one were given back anyway, the leases of runs, tool calls and
deliveries make the second copy a no-op.

A message's record is sent and its task started without waiting for Redis's answer, which is read
before anything else touches the records (the next record, an acknowledgement, a restore): a round trip
off every task's start, and no acknowledgement removes a record before it is written. Acknowledgements go
the same way, on the same connection (Redis runs its commands in order): a round trip off the consumer's
loop for every task. A record or an acknowledgement whose connection broke before the answer came is
written again then.

Not covered here: a message Redis has handed over (BRPOP) that the worker had not yet recorded when it
was killed, which on a busy worker can take tens of milliseconds; it is gone from Redis. The reapers find
such work by its lease (infra/leases.py: leases_lost_in_transit) and send it again.

Selected with CELERY_BROKER_TRANSPORT (settings.py); the broker URL stays a plain redis:// URL.
"""

import logging
import threading
from time import time
from typing import Callable

import redis
from celery import current_app
from kombu.transport import redis as kombu_redis
from kombu.utils.json import dumps

from beamclaw_project.infra.redis import CONNECTION_LOST, Command

logger = logging.getLogger(__name__)

# "<node> <incarnation>" of this process once it consumes (set by the worker before its first fetch).
_consumer_owner: str | None = None


def consumer_owner_set(node: str, incarnation: str) -> None:
    global _consumer_owner
    _consumer_owner = f"{node} {incarnation}"


def owner_parse(owner: str) -> tuple[str, str]:
    node, _, incarnation = owner.rpartition(" ")
    return node, incarnation


def queues_empty(names: set[str]) -> set[str]:
    """Those of the named queues that hold no message."""
    with current_app.pool.acquire(block=True) as connection:
        channel = connection.default_channel
        return {name for name in names if channel._size(name) == 0}


class QoS(kombu_redis.QoS):
    """kombu's record of fetched messages, with their owner, and recorded without waiting for Redis: a
    message's record is sent, the message goes to its task at once, and Redis's answer is read before
    anything else touches the records (the next record, an acknowledgement, a restore). So a task starts a
    round trip sooner, and no acknowledgement can remove a record before it is written."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._recording = threading.RLock()
        # A connection of its own (not one of the channel's pool, which the acknowledgements share), made on
        # the first record and again after one broke.
        self._record_connection = None
        self._record_unread: list[tuple] | None = None  # the commands of the record whose answer is unread

    @property
    def unacked_owner_key(self) -> str:
        return f"{self.unacked_key}_owner"

    def append(self, message, delivery_tag):
        # kombu's append, with the owner written in the same transaction.
        delivery = message.delivery_info
        commands = [
            ("MULTI",),
            ("ZADD", self.unacked_index_key, time(), delivery_tag),
            ("HSET", self.unacked_key, delivery_tag, dumps([message._raw, delivery["exchange"], delivery["routing_key"]])),
            *([("HSET", self.unacked_owner_key, delivery_tag, _consumer_owner)] if _consumer_owner is not None else []),
            ("EXEC",),
        ]
        self._record_send(commands)
        super(kombu_redis.QoS, self).append(message, delivery_tag)

    def _record_send(self, commands: list[tuple]) -> None:
        """Send a transaction on the records (a record, an acknowledgement) without waiting for its answer,
        once the answer to the last one is read; on the records' own connection, so Redis runs them in the
        order they were sent."""
        with self._recording:
            self._records_settle()
            try:
                if self._record_connection is None:
                    pool = self.channel.pool
                    self._record_connection = pool.connection_class(**pool.connection_kwargs)
                connection = self._record_connection
                connection.send_packed_command(connection.pack_commands(commands))
                self._record_unread = commands
            except CONNECTION_LOST:
                self._record_connection_drop()
                self._record_now(commands)

    def _records_settle(self) -> None:
        """Read Redis's answer to the last record (or acknowledgement) sent; if the connection broke before
        it came, write it again the usual way (with redis-py's retries): its commands are idempotent. A record
        Redis refused (out of memory, say), or could not be written again, is logged, not raised: it is about a
        message already running, and raising it here would fail whatever came next (the next message, an
        acknowledgement). Without its record that message is still covered, as one fetched but not yet
        recorded is: the reapers find such work by its lease. An acknowledgement not written leaves the
        message to be handed out again after the visibility timeout, where its work's lease or state makes it
        a no-op."""
        with self._recording:
            commands, self._record_unread = self._record_unread, None
            if commands is None:
                return
            refused = None
            try:
                for _ in commands:  # (every answer is read, so that none is left for the next record)
                    try:
                        answer = self._record_connection.read_response()
                    except redis.exceptions.ResponseError as exc:
                        answer = exc
                    errors = answer if isinstance(answer, list) else [answer]  # (EXEC answers with a list)
                    refused = refused or next((e for e in errors if isinstance(e, redis.exceptions.ResponseError)), None)
            except CONNECTION_LOST:
                self._record_connection_drop()
                try:
                    self._record_now(commands)
                except Exception as exc:  # noqa: BLE001 - see above
                    refused = exc
            if refused is not None and commands[1][0] == "ZREM":
                logger.warning("a message's acknowledgement was not written to Redis (%r): it is handed out again "
                               "after the visibility timeout, and does nothing then", refused)
            elif refused is not None:
                logger.warning("a fetched message was not recorded in Redis (%r); if this worker dies before it "
                               "ends, its work is sent again by the reapers", refused)

    def _record_now(self, commands: list[tuple]) -> None:
        with self.channel.conn_or_acquire() as client:
            with client.pipeline() as pipe:  # (a MULTI/EXEC transaction of the commands between them)
                for command in commands[1:-1]:
                    pipe.execute_command(*command)
                pipe.execute()

    def _record_connection_drop(self) -> None:
        connection, self._record_connection = self._record_connection, None
        if connection is not None:
            connection.disconnect()

    def ack(self, delivery_tag):
        # kombu's acknowledgement (the record and its owner removed, in one transaction), sent without
        # waiting for Redis, as a record is: the consumer's loop, which acknowledges, goes on a round trip
        # sooner. If the connection breaks before the answer, it is sent again at the next look at the records.
        self._record_send([("MULTI",), *self._removal_commands(delivery_tag), ("EXEC",)])
        super(kombu_redis.QoS, self).ack(delivery_tag)

    def reject(self, delivery_tag, requeue=False):
        self._records_settle()
        super().reject(delivery_tag, requeue=requeue)

    def restore_by_tag(self, tag, client=None, leftmost=False):
        self._records_settle()
        super().restore_by_tag(tag, client=client, leftmost=leftmost)

    def restore_visible(self, *args, **kwargs):
        # Called every few seconds by the consumer: an idle worker's last record is settled here too.
        self._records_settle()
        return super().restore_visible(*args, **kwargs)

    def _removal_commands(self, delivery_tag) -> list[tuple]:
        """What removes a message's record: kombu's two, and its owner."""
        return [
            ("ZREM", self.unacked_index_key, delivery_tag),
            ("HDEL", self.unacked_key, delivery_tag),
            ("HDEL", self.unacked_owner_key, delivery_tag),
        ]

    def _remove_from_indices(self, delivery_tag, pipe=None):
        # kombu's, with the owner: for its restores, which give a message back in the same transaction.
        with self.pipe_or_acquire(pipe) as pipe:
            for command in self._removal_commands(delivery_tag):
                pipe.execute_command(*command)
            return pipe

    def orphans_restore(self, owners_alive: Callable[[set[str]], set[str]], *, fetched_before: float) -> int:
        """Put back in their queues the unacknowledged messages whose owner is no longer alive and that
        were fetched before `fetched_before` (a time.time()), to the front of their queues as kombu restores them.
        `owners_alive` gets the owners on record and returns those still alive. Returns how many."""
        with self.channel.conn_or_acquire() as client:
            owned = {tag: owner.decode() for tag, owner in client.hgetall(self.unacked_owner_key).items()}
            if not owned:
                return 0
            alive = owners_alive(set(owned.values()))
            orphans = [tag for tag, owner in owned.items() if owner not in alive]
            restored = 0
            for tag in orphans:
                fetched_at = client.zscore(self.unacked_index_key, tag)
                if fetched_at is None or fetched_at < fetched_before:
                    # Also clears the owner of a message acknowledged since: kombu's restore is a WATCHed
                    # transaction that puts back only what is still unacknowledged.
                    self.restore_by_tag(tag, client)
                    if fetched_at is not None:
                        restored += 1
            return restored


class _CommandBatch:
    """What Channel._put needs of a publish batch (kombu's own way of pipelining publishes): here it keeps
    the Redis commands of a message, for the caller to send."""

    def __init__(self):
        self.commands: list[Command] = []

    def add(self, name: str, *args) -> None:
        self.commands.append(Command(name.upper(), args))


class Channel(kombu_redis.Channel):
    QoS = QoS
    _client_of_pool: tuple | None = None  # (the pool, a client on it)

    def _create_client(self, asynchronous=False):
        # kombu builds a new redis client object for each command it sends (conn_or_acquire), and each one
        # copies redis-py's ~170 response callbacks: a fifth of the CPU of sending a task. One client per
        # connection pool will do (clients are thread-safe; a reconnect makes a new pool, so a new client).
        if asynchronous:
            return super()._create_client(asynchronous=True)
        pool = self.pool
        cached = self._client_of_pool
        if cached is None or cached[0] is not pool:
            cached = self._client_of_pool = (pool, super()._create_client())
        return cached[1]

    def message_put(self, queue: str, message: dict) -> None:
        """Push a message built by the sender (infra/tasks.task_send) onto a queue's list, at its priority:
        what publishing does once the exchange has routed it there."""
        self._put(queue, message)

    def message_put_commands(self, queue: str, message: dict) -> list[Command]:
        """The Redis commands message_put would send, for the caller to send with others."""
        batch = _CommandBatch()
        self._put(queue, message, _publish_batch=batch)
        return batch.commands

    def messages_put(self, messages: list[tuple[str, dict]]) -> None:
        """message_put for each (queue, message), in one round trip."""
        with self.conn_or_acquire() as client, client.pipeline(transaction=False) as pipe:
            for queue, message in messages:
                for command in self.message_put_commands(queue, message):
                    pipe.execute_command(command.name, *command.args)
            pipe.execute()

    def _connparams(self, asynchronous=False):
        if self.connection.client is None:
            raise redis.exceptions.ConnectionError("the broker connection was closed; reconnecting")
        return super()._connparams(asynchronous=asynchronous)


class Transport(kombu_redis.Transport):
    Channel = Channel
