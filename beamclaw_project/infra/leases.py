"""Leases: which worker is doing a piece of work right now, or that the work waits in a queue.

One key per piece of work (a run's step, a tool call, an API invocation). It holds `queued` from the
moment a task is enqueued until a worker picks it up; the worker then swaps in its own token with a
short expiry (RUN_LEASE_SECONDS), and one keeper thread per process renews every lease the process
holds. When a worker dies, even by SIGKILL, its leases lapse within the lease time and the
housekeeping reapers find the work unleased: Postgres says it is open, Redis says nobody has it. A
second delivery of a task whose work is alive elsewhere finds the lease taken and leaves.

Other values mark phases in which no worker holds the work but it is not orphaned either (a run whose
tool calls are in flight, a tool call deferred until an outside event settles it). Acquiring, marking
and handing over are compare-and-sets (`lease_set`: set if free or holding one of the given values;
`Lease.hand_over`: only over the worker's own token); marking work queued is a plain SET.
"""

import logging
import threading
import time
import uuid

from django.conf import settings

from beamclaw_project.infra.broker import queues_empty
from beamclaw_project.infra.redis import ScriptCall, redis_client, redis_script, redis_scripts_call

logger = logging.getLogger(__name__)

QUEUED = "queued"

# Set KEYS[1] to ARGV[1] for ARGV[2] ms if it is unset or holds one of ARGV[3..]: the one
# compare-and-set that acquiring, marking and handing over a lease all are.
_SET_SCRIPT = """
local v = redis.call('GET', KEYS[1])
local free = (v == false)
for i = 3, #ARGV do
  if v == ARGV[i] then free = true end
end
if free then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

_SWAP_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"""

_RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def lease_ttl_ms() -> int:
    return int(settings.BEAMCLAW["RUN_LEASE_SECONDS"] * 1000)


def queued_ttl_ms() -> int:
    # Queued work may legitimately wait as long as the broker would hold it before redelivering.
    return settings.CELERY_BROKER_TRANSPORT_OPTIONS["visibility_timeout"] * 1000


def lease_set(key: str, value: str, *, ttl_ms: int, replacing: tuple[str, ...] = ()) -> bool:
    """Set the lease to `value` if nothing holds it or it holds one of `replacing`."""
    _, keys, args = lease_set_call(key, value, ttl_ms=ttl_ms, replacing=replacing)
    return bool(redis_script(_SET_SCRIPT)(keys=keys, args=args))


def lease_set_call(key: str, value: str, *, ttl_ms: int, replacing: tuple[str, ...] = ()) -> ScriptCall:
    """lease_set, to send with other calls (redis_scripts_call); its result is 1 if the lease was set."""
    return _SET_SCRIPT, [key], [value, ttl_ms, *replacing]


def leases_set(keys: list[str], value: str, *, ttl_ms: int, replacing: tuple[str, ...] = ()) -> list[bool]:
    """lease_set for each key, in one round trip."""
    calls = [lease_set_call(key, value, ttl_ms=ttl_ms, replacing=replacing) for key in keys]
    return [bool(done) for done in redis_scripts_call(calls)]


def lease_mark_queued(key: str, *, only_if_free: bool = False) -> bool:
    """Mark work as waiting in a queue; with only_if_free, only when nothing holds or queued it."""
    return bool(redis_client().set(key, QUEUED, px=queued_ttl_ms(), nx=only_if_free))


def lease_values(keys: list[str]) -> list[bytes | None]:
    return redis_client().mget(keys) if keys else []


def leases_lost_in_transit(queued: list[tuple[str, str]]) -> list[bool]:
    """For work the caller read as `queued` ((lease key, the queue its task was sent to) pairs): was its task lost on the
    way to a worker? Kombu's fetch takes a message off its queue before the worker records it as
    unacknowledged (infra/broker.py), so a worker SIGKILLed in between loses it, and the marker would wait
    out its hour. Lost means: still `queued` a lease period after it was marked, with its queue empty.
    Work that a live worker fetched and has not started in that time looks the same; sending it again is
    harmless, as the second delivery finds the lease taken. (Behind a backlog the loss is noticed once the
    queue has drained.)"""
    if not queued:
        return []
    # The marker's age is what its expiry has run down. A key a worker took since holds a lease time at most,
    # so it looks old too; lease_requeue then finds it taken and nothing is sent again.
    pipe = redis_client().pipeline(transaction=False)
    for key, _ in queued:
        pipe.pttl(key)
    aged = [ttl >= 0 and queued_ttl_ms() - ttl > lease_ttl_ms() for ttl in pipe.execute()]
    if not any(aged):
        return aged
    empty = queues_empty({queue for (_, queue), old in zip(queued, aged) if old})
    return [old and queue in empty for (_, queue), old in zip(queued, aged)]


def lease_requeue(key: str) -> bool:
    """Mark work queued again (a fresh hour) for a task sent again, unless a worker took it meanwhile."""
    return lease_set(key, QUEUED, ttl_ms=queued_ttl_ms(), replacing=(QUEUED,))


# Extend KEYS[i]'s expiry to ARGV[1] ms if it still holds token ARGV[i + 1]; returns 1/0 per key.
_RENEW_SCRIPT = """
local renewed = {}
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[i + 1] then
    redis.call('PEXPIRE', key, ARGV[1])
    renewed[i] = 1
  else
    renewed[i] = 0
  end
end
return renewed
"""


class _Keeper:
    """Renews every lease this process holds, every third of the lease time, and only while it still holds
    it: a process that was frozen for longer than the lease (SIGSTOP, a paused container or VM) finds on
    waking that another worker has taken the work over, and must neither extend that worker's lease nor go
    on with the work (Lease.lost)."""

    def __init__(self):
        self._held: dict[str, Lease] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def hold(self, lease: "Lease") -> None:
        with self._lock:
            self._held[lease.key] = lease
            if self._thread is None:
                self._thread = threading.Thread(target=self._renew_forever, name="lease-keeper", daemon=True)
                self._thread.start()

    def drop(self, lease: "Lease") -> None:
        """Stop renewing this lease (not another Lease object on the same key this process took since)."""
        with self._lock:
            if self._held.get(lease.key) is lease:
                del self._held[lease.key]

    def _renew_forever(self) -> None:
        stop = threading.Event()
        while not stop.wait(settings.BEAMCLAW["RUN_LEASE_SECONDS"] / 3):
            with self._lock:
                held = list(self._held.values())
            if not held:
                continue
            try:
                renewing_since = time.monotonic()
                renewed = redis_script(_RENEW_SCRIPT)(
                    keys=[lease.key for lease in held], args=[lease_ttl_ms(), *(lease.token for lease in held)]
                )
            except Exception:  # noqa: BLE001 - a Redis blip must not kill the keeper; the next tick retries
                logger.exception("could not renew leases")
                continue
            for lease, ok in zip(held, renewed):
                if ok:
                    lease.confirmed_at = renewing_since
                else:
                    lease.gone = True
                    self.drop(lease)
                    logger.warning("lost the lease %s: this worker was stalled for longer than the lease time", lease.key)


_keeper = _Keeper()


class Lease:
    """A worker's hold on one piece of work while it runs it. `takes_over`: the marker values a worker
    may replace when it picks the work up (always `queued`)."""

    def __init__(self, key: str, *, takes_over: tuple[str, ...] = ()):
        self.key = key
        self.token = uuid.uuid4().hex
        self.takes_over = (QUEUED, *takes_over)
        self.confirmed_at = 0.0  # time.monotonic() when Redis last confirmed this lease is ours
        self.gone = False
        self.released = False
        self._ttl_seconds = lease_ttl_ms() / 1000  # (lost() is asked at every stream event)

    def acquire(self) -> bool:
        """Take the lease if it is free or holds one of the markers this work may be taken over from."""
        taking_since = time.monotonic()
        return self.acquired(lease_set(self.key, self.token, ttl_ms=lease_ttl_ms(), replacing=self.takes_over),
                             since=taking_since)

    def acquire_call(self) -> ScriptCall:
        """acquire, to send with other calls (redis_scripts_call): hand its result to `acquired`, with the
        time.monotonic() from before the calls were sent."""
        return lease_set_call(self.key, self.token, ttl_ms=lease_ttl_ms(), replacing=self.takes_over)

    def acquired(self, result, *, since: float) -> bool:
        if not result:
            return False
        self.confirmed_at = since
        _keeper.hold(self)
        return True

    def lost(self) -> bool:
        """Whether this worker no longer holds the work: cheap while renewals keep coming (no round trip),
        asked of Redis once the last confirmation is older than the lease time (the process was stalled)."""
        if not self.gone and time.monotonic() - self.confirmed_at > self._ttl_seconds:
            checking_since = time.monotonic()
            if redis_client().get(self.key) == self.token.encode():
                self.confirmed_at = checking_since
            else:
                self.gone = True
                _keeper.drop(self)
        return self.gone

    def hand_over(self, value: str, *, ttl_ms: int) -> None:
        """Stop holding the work but leave `value` in the lease for `ttl_ms` (a deferred call, a run
        waiting on its tool calls) if this worker still holds it."""
        _keeper.drop(self)
        redis_script(_SWAP_SCRIPT)(keys=[self.key], args=[self.token, value, ttl_ms])

    def release(self) -> None:
        if self.released:
            return
        _keeper.drop(self)
        redis_script(_RELEASE_SCRIPT)(keys=[self.key], args=[self.token])

    def release_call(self) -> ScriptCall:
        """release, to send with other calls (redis_scripts_call); release() does nothing after it. Should
        the calls not reach Redis, the lease lapses after its time, unrenewed."""
        self.released = True
        _keeper.drop(self)
        return _RELEASE_SCRIPT, [self.key], [self.token]
