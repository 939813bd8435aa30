"""The Redis clients every process shares: one pool for threads (workers, management commands) and one
for the event loop (Daphne). Redis holds only what can be rebuilt or may lapse (event streams, leases,
counters, heartbeats); Postgres is the source of truth."""

import asyncio
import sys
import threading
from functools import lru_cache, wraps
from typing import NamedTuple

import redis
import redis.asyncio as aioredis
from django.conf import settings

# What redis-py raises when a connection is gone (Redis restarted, a timeout, a reset socket).
CONNECTION_LOST = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)

# An async read that outlives the longest XREAD block (5 s) by this much is a dead connection.
ASYNC_SOCKET_TIMEOUT_SECONDS = 15


@lru_cache(maxsize=1)
def redis_client() -> redis.Redis:
    """One connection pool per process, shared by all worker threads (redis-py is thread-safe)."""
    return redis.Redis.from_url(settings.REDIS_URL, max_connections=1000, health_check_interval=30)


def per_event_loop(factory):
    """`factory()`'s result, made once per running event loop: asyncio connections belong to the loop that
    opened them. A web process has one loop; tests may run several, one after another."""
    made: dict[asyncio.AbstractEventLoop, object] = {}

    @wraps(factory)
    def get():
        loop = asyncio.get_running_loop()
        value = made.get(loop)
        if value is None:
            for closed in [other for other in made if other.is_closed()]:
                del made[closed]
            value = made[loop] = factory()
        return value

    return get


@per_event_loop
def _async_pool() -> aioredis.ConnectionPool:
    return aioredis.ConnectionPool.from_url(
        settings.REDIS_URL, max_connections=10000, socket_timeout=ASYNC_SOCKET_TIMEOUT_SECONDS, socket_connect_timeout=5
    )


@per_event_loop
def async_redis() -> aioredis.Redis:
    """The event loop's client, made once: a client is safe to share between coroutines (each command takes
    a connection from the pool), and making one copies redis-py's ~170 response callbacks (~3% of the web
    process's CPU per streamed request when every request made its own)."""
    return aioredis.Redis(connection_pool=_async_pool())


@lru_cache(maxsize=None)
def redis_script(source: str):
    """A Lua script registered once per process: called by its SHA (EVALSHA), not sent and hashed each
    time (redis-py loads it again if Redis lost it)."""
    return redis_client().register_script(source)


def _give_back(pool: redis.ConnectionPool, connection, *, broken: bool) -> None:
    """Return a connection taken from `pool`; a broken one (a reply may be left unread on it) is closed first,
    so that reply cannot answer the next command sent on it."""
    if broken:
        connection.disconnect()
    pool.release(connection)


class _HeldConnection:
    """A pool connection one thread keeps (in `_thread_held`), given back to the pool when that thread ends:
    its thread-local data goes then, and this with it. Threads come and go: Django runs each request's sync
    view, and Channels each socket's sync handlers, on a thread of their own, and a connection kept by a
    thread that ended would never come back. The web process ran out of its pool's 1,000 connections after
    as many REST requests, each counted against its key's rate limit on its own thread."""

    def __init__(self):
        self.pool = redis_client().connection_pool
        self.connection = self.pool.get_connection()

    def let_go(self, *, broken: bool) -> None:
        connection, self.connection = self.connection, None
        if connection is not None:
            _give_back(self.pool, connection, broken=broken)

    def __del__(self):
        # At the interpreter's exit the module may be torn down already; its pool goes with the process.
        if not sys.is_finalizing():
            self.let_go(broken=False)


_thread_held = threading.local()


def redis_script_held_call(source: str, keys: list, args: list):
    """redis_script(source)(keys=keys, args=args), on a connection the calling thread keeps for such calls
    while it lives: for a call made many times a second by the same thread (a step's text deltas). Taking a
    connection from the pool and giving it back (a readiness poll each time) and redis-py's layers around a
    command were half of such a call's CPU. A call that finds the script gone, or cannot reach Redis on that
    connection, is made again the usual way (which loads the script, and retries as redis-py does)."""
    return HeldCallSent(source, keys, args).result()


class HeldCallSent:
    """redis_script_held_call in two halves: the call is sent now, `result()` reads its answer, so that the
    thread can do something else (a Postgres read) while Redis answers. Used as a context manager: a caller that leaves without reading
    it drops the connection, whose unread answer must not answer the thread's next call."""

    def __init__(self, source: str, keys: list, args: list):
        self.call = (source, keys, args)
        self._held: _HeldConnection | None = None
        try:
            script = redis_script(source)
            # The thread's kept connection is taken out until the answer is read (a call in between gets another).
            self._held = getattr(_thread_held, "held", None) or _HeldConnection()
            _thread_held.held = None
            self._held.connection.send_command("EVALSHA", script.sha, len(keys), *keys, *args)
        except BaseException as exc:
            self._drop()
            if not isinstance(exc, CONNECTION_LOST):
                raise  # (otherwise result() makes the call again, the usual way)

    def result(self):
        held, self._held = self._held, None
        if held is not None:
            try:
                answer = held.connection.read_response()
            except redis.exceptions.NoScriptError:
                self._keep(held)  # (its reply was read whole: the connection stays good)
            except redis.exceptions.ResponseError:
                self._keep(held)
                raise  # the script's own error, read whole
            except BaseException as exc:
                held.let_go(broken=True)
                if not isinstance(exc, CONNECTION_LOST):
                    raise
            else:
                self._keep(held)
                return answer
        # Not sent, the script gone, or the connection lost: the usual way (loads the script, retries).
        source, keys, args = self.call
        return redis_script(source)(keys=keys, args=args)

    @staticmethod
    def _keep(held: "_HeldConnection") -> None:
        if getattr(_thread_held, "held", None) is None:
            _thread_held.held = held
        else:
            held.let_go(broken=False)

    def _drop(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            held.let_go(broken=True)

    def __enter__(self) -> "HeldCallSent":
        return self

    def __exit__(self, *exc_info) -> None:
        self._drop()


def redis_script_calls(source: str, calls: list[tuple[list, list]]) -> list:
    """The script called once per (keys, args), in one round trip (redis_scripts_call)."""
    return redis_scripts_call([(source, keys, args) for keys, args in calls])


ScriptCall = tuple[str, list, list]  # a Lua script's source, its keys, its arguments


class Command(NamedTuple):
    """A plain Redis command, to send with script calls (redis_scripts_call)."""

    name: str
    args: tuple


def redis_scripts_call(calls: list[ScriptCall | Command]) -> list:
    """Each (script source, keys, args) called by its SHA, and each Command sent, all in one pipeline: one
    round trip, the results in order. (A Script object given a pipeline asks SCRIPT EXISTS first, a round
    trip of its own.) A call whose script Redis lost (a restart, say) ran nothing: its script is loaded and
    that call is sent again, after the others."""
    if not calls:
        return []
    pipe = redis_client().pipeline(transaction=False)
    for call in calls:
        pipe.execute_command(*_command_of(call))
    return _scripts_results(pipe.execute(raise_on_error=False), calls)


def _command_of(call: ScriptCall | Command) -> tuple:
    """The Redis command (name first) that sends a call: a script by its SHA."""
    if isinstance(call, Command):
        return (call.name, *call.args)
    source, keys, args = call
    return ("EVALSHA", redis_script(source).sha, len(keys), *keys, *args)


def _scripts_results(results: list, calls: list[ScriptCall | Command]) -> list:
    for i, (result, call) in enumerate(zip(results, calls)):
        if isinstance(result, redis.exceptions.NoScriptError):
            source, keys, args = call
            results[i] = redis_script(source)(keys=keys, args=args)  # (which loads a script Redis lacks)
        elif isinstance(result, Exception):
            raise result
    return results


class ScriptsSent:
    """redis_scripts_call's calls, sent; their results are read by `results()`, so that the caller can do
    something else (a Postgres read) while Redis answers. Used as a context manager: a caller that leaves
    without reading them leaves no unread reply on a connection of the pool."""

    def __init__(self, calls: list[ScriptCall | Command]):
        self.calls = calls
        self._commands = commands = [_command_of(call) for call in calls]
        self._connection = None
        try:
            self._connection = connection = redis_client().connection_pool.get_connection()
            connection.send_packed_command(connection.pack_commands(commands))
        except CONNECTION_LOST:
            self._let_go(broken=True)  # results() sends them again, with redis-py's retries
        except BaseException:
            self._let_go(broken=True)
            raise

    def results(self) -> list:
        """The calls' results, as redis_scripts_call returns them."""
        connection = self._connection
        if connection is None:
            return redis_scripts_call(self.calls)
        results = []
        client = redis_client()
        try:
            for command in self._commands:
                try:
                    # (with the reply callback of its command, as a pipeline gives it)
                    results.append(client.parse_response(connection, command[0]))
                except redis.exceptions.ResponseError as exc:
                    results.append(exc)
        except CONNECTION_LOST:
            # As a pipeline whose connection broke does: sent again on another connection.
            self._let_go(broken=True)
            return redis_scripts_call(self.calls)
        except BaseException:
            self._let_go(broken=True)
            raise
        self._let_go(broken=False)
        return _scripts_results(results, self.calls)

    def _let_go(self, *, broken: bool) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            _give_back(redis_client().connection_pool, connection, broken=broken)

    def __enter__(self) -> "ScriptsSent":
        return self

    def __exit__(self, *exc_info) -> None:
        self._let_go(broken=True)


_COUNT_SCRIPT = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then
  redis.call('EXPIRE', KEYS[1], ARGV[1])
end
return count
"""


def counter_incr(key: str, *, ttl_seconds: int) -> int:
    """Add one to a counter that expires `ttl_seconds` after its first count; returns the new count. One
    round trip (a pipeline object alone costs more CPU than the two commands), on the calling thread's kept
    connection: the web process counts every request against its key's rate limit."""
    source, keys, args = counter_incr_call(key, ttl_seconds=ttl_seconds)
    return int(redis_script_held_call(source, keys, args))


def counter_incr_call(key: str, *, ttl_seconds: int) -> ScriptCall:
    """counter_incr, to send with other calls (redis_scripts_call); its result is the new count."""
    return _COUNT_SCRIPT, [key], [ttl_seconds]


def get_call(key: str) -> Command:
    """GET, to send with script calls (redis_scripts_call); its result is the value or None."""
    return Command("GET", (key,))


def resp_array_head(count: int) -> bytes:
    """What comes before a command's `count` parts (resp_bulks): a command as Redis reads it off the wire
    (RESP), the bytes redis-py would send, for a caller that builds most of a command once and sends it many
    times (UnawaitedCommands)."""
    return b"*%d\r\n" % count


def resp_bulks(*parts: bytes | str | int) -> bytes:
    encoded = [part if isinstance(part, bytes) else str(part).encode() for part in parts]
    return b"".join(b"$%d\r\n%b\r\n" % (len(part), part) for part in encoded)


class UnawaitedCommands:
    """Commands sent one after another on one connection, none waiting for its answer: a step's text deltas.
    Waiting for each answer (the thread's sleep and wake-up) was most of what a delta's append cost the
    worker's thread.

    Redis runs a connection's commands in the order they were sent, so they land in order, and a lost
    connection leaves a prefix of them run. `settle()` reads the answers and raises the first failure (a lost
    connection, or a command's own error, which a command after it does not undo). Nothing sent on another
    connection is ordered after these commands until `settle()` returns: call it before anything that must
    follow them is sent."""

    # Answers read now and then on a long stream, so they do not pile up unread.
    SETTLE_EVERY = 64

    def __init__(self):
        self._lock = threading.Lock()
        self._connection = None
        self._unread = 0

    def send(self, command: bytes) -> None:
        """`command` packed (resp_array_head, resp_bulks)."""
        with self._lock:
            if self._connection is None:
                self._connection = redis_client().connection_pool.get_connection()
            try:
                # A health check (a PING, its answer read) only before the first command: later, the answer it
                # would read is one of the commands'.
                self._connection.send_packed_command([command], check_health=self._unread == 0)
            except BaseException:
                self._let_go(broken=True)
                raise
            self._unread += 1
            if self._unread >= self.SETTLE_EVERY:
                self._read_answers()

    def settle(self) -> None:
        """Read the answers of every command sent (raising the first failure: a lost connection, a command's
        own error); the connection goes back to the pool."""
        with self._lock:
            if self._connection is None:
                return
            self._read_answers()
            self._let_go(broken=False)

    def _read_answers(self) -> None:
        try:
            while self._unread:
                self._connection.read_response()
                self._unread -= 1
        except BaseException:
            self._let_go(broken=True)  # (the answers after the failure stay unread: they must not answer anyone)
            raise

    def _let_go(self, *, broken: bool) -> None:
        connection, self._connection = self._connection, None
        self._unread = 0
        if connection is not None:
            _give_back(redis_client().connection_pool, connection, broken=broken)
