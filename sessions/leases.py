"""Run leases: which worker is executing a run's step right now, or that a step is waiting in a queue.

`bc:run:<id>:lease` holds `queued` from the moment a step is enqueued until a worker picks it up; the
worker then swaps in its own token with a short expiry, and one keeper thread per process renews every
lease the process holds. When a worker dies (even by SIGKILL) its leases lapse within the lease time,
and the housekeeping reaper re-enqueues the orphaned step on any live worker. A second delivery of a
step that is alive elsewhere finds the lease taken and leaves.
"""

import logging
import threading
import uuid

from django.conf import settings

from sessions.events import redis_client

logger = logging.getLogger(__name__)

QUEUED = "queued"
# Held while a run's tool calls are in flight and no step is queued or running (see tools/loop.py).
TOOLS_PHASE = "tools"

_ACQUIRE_SCRIPT = """
local v = redis.call('GET', KEYS[1])
if v == false or v == ARGV[3] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

_RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def lease_key(run_id) -> str:
    return f"bc:run:{run_id}:lease"


def _ttl_ms() -> int:
    return int(settings.BEAMCLAW["RUN_LEASE_SECONDS"] * 1000)


def _queued_ttl_ms() -> int:
    # A queued step may legitimately wait as long as the broker would hold it before redelivering.
    return settings.CELERY_BROKER_TRANSPORT_OPTIONS["visibility_timeout"] * 1000


_MARK_QUEUED_SCRIPT = """
local v = redis.call('GET', KEYS[1])
if v == false or v == ARGV[2] or v == ARGV[3] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[1])
  return 1
end
return 0
"""


def mark_queued(run_id, *, only_if_free: bool = False) -> bool:
    """Record that a step for this run sits in a queue. Never overwrites a worker's lease: a step is
    enqueued either before any worker holds the run, or by the worker holding it (which then releases).
    Replaces the tools-phase marker: the step enqueued when the last tool call settles must find the
    lease free to take, or it would be skipped and wait for the reaper (a 90 s stall once).
    With only_if_free, do nothing (and return False) when a step is already marked queued too."""
    if only_if_free:
        return bool(redis_client().set(lease_key(run_id), QUEUED, px=_queued_ttl_ms(), nx=True))
    return bool(redis_client().eval(_MARK_QUEUED_SCRIPT, 1, lease_key(run_id), _queued_ttl_ms(), QUEUED, TOOLS_PHASE))


class _Keeper:
    def __init__(self):
        self._held: dict[str, str] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def hold(self, key: str, token: str) -> None:
        with self._lock:
            self._held[key] = token
            if self._thread is None:
                self._thread = threading.Thread(target=self._renew_forever, name="run-lease-keeper", daemon=True)
                self._thread.start()

    def drop(self, key: str) -> None:
        with self._lock:
            self._held.pop(key, None)

    def _renew_forever(self) -> None:
        stop = threading.Event()
        while not stop.wait(settings.BEAMCLAW["RUN_LEASE_SECONDS"] / 3):
            with self._lock:
                held = list(self._held)
            if not held:
                continue
            try:
                pipe = redis_client().pipeline(transaction=False)
                for key in held:
                    pipe.pexpire(key, _ttl_ms())
                pipe.execute()
            except Exception:  # noqa: BLE001 - a Redis blip must not kill the keeper; the next tick retries
                logger.exception("could not renew run leases")


_keeper = _Keeper()


class RunLease:
    def __init__(self, run_id):
        self.key = lease_key(run_id)
        self.token = uuid.uuid4().hex

    def acquire(self) -> bool:
        client = redis_client()
        if not client.eval(_ACQUIRE_SCRIPT, 1, self.key, self.token, _ttl_ms(), QUEUED):
            return False
        _keeper.hold(self.key, self.token)
        return True

    def release(self) -> None:
        _keeper.drop(self.key)
        redis_client().eval(_RELEASE_SCRIPT, 1, self.key, self.token)


def unleased(run_ids: list) -> list:
    """The runs that no worker holds and no queue holds a step for: orphans."""
    if not run_ids:
        return []
    values = redis_client().mget([lease_key(run_id) for run_id in run_ids])
    return [run_id for run_id, value in zip(run_ids, values) if value is None]
