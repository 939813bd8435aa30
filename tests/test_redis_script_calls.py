"""Scripts called many times in one round trip (infra/redis.redis_script_calls): what runs started together
use to mark their leases and publish their first events."""

import uuid

from beamclaw_project.infra.leases import lease_values, leases_set
from beamclaw_project.infra.redis import get_call, redis_client, redis_script_calls, redis_scripts_call
from sessions import events


def test_a_script_redis_does_not_hold_is_loaded_and_every_call_runs_once():
    # A script Redis has never seen fails every call alike (NOSCRIPT), as after a restart that lost them all.
    counter = f"bc:test:{uuid.uuid4().hex}"
    source = f"-- {counter}\nreturn redis.call('INCRBY', KEYS[1], ARGV[1])"
    assert redis_script_calls(source, [([counter], [1]), ([counter], [10])]) == [1, 11]
    assert redis_script_calls(source, [([counter], [100])]) == [111]
    assert int(redis_client().get(counter)) == 111
    assert redis_script_calls(source, []) == []


def test_calls_of_several_scripts_each_run_once_when_redis_lacks_only_some():
    """A step takes its lease, counts its delivery and reads the abort flag in one round trip. After a Redis
    restart another process may have loaded one of those scripts again and not the others: only the calls
    Redis refused run again, so none runs twice (a lease taken twice would look taken by someone else)."""
    counter = f"bc:test:{uuid.uuid4().hex}"
    known = f"-- known {counter}\nreturn redis.call('INCRBY', KEYS[1], ARGV[1])"
    unknown = f"-- unknown {counter}\nreturn redis.call('INCRBY', KEYS[1], ARGV[1])"
    redis_client().script_load(known)
    calls = [(known, [counter], [1]), (unknown, [counter], [10]), (known, [counter], [100])]
    assert redis_scripts_call(calls) == [1, 111, 101]  # (the refused call ran after the others)
    assert int(redis_client().get(counter)) == 111
    assert redis_scripts_call([get_call(counter), get_call(f"{counter}:missing")]) == [b"111", None]


def test_runs_started_together_get_their_first_event_and_a_queued_lease_each():
    run_ids = [uuid.uuid4() for _ in range(3)]
    events.publish_many([(run_id, events.RUN_STARTED, {"run_id": str(run_id)}) for run_id in run_ids])
    for run_id in run_ids:
        [first] = events.read_all(run_id)
        assert (first.seq, first.event, first.payload) == (1, events.RUN_STARTED, {"run_id": str(run_id)})

    keys = [f"bc:test:{run_id}:lease" for run_id in run_ids]
    redis_client().set(keys[1], "a-worker's-token")
    assert leases_set(keys, "queued", ttl_ms=60_000, replacing=("queued",)) == [True, False, True]
    assert lease_values(keys) == [b"queued", b"a-worker's-token", b"queued"]
