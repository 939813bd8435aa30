"""Scripts and commands sent together in one round trip (infra/redis.redis_scripts_call): what a step uses
to take its lease, what runs started together use to mark their leases, and what a run's start uses to
publish its first event and send its first step."""

import threading
import uuid

import pytest
import redis
from django.test import override_settings

from beamclaw_project.infra import redis as infra_redis
from beamclaw_project.infra.leases import lease_values, leases_set
from beamclaw_project.infra.queues import WORK_PRIORITY, tenant_queue
from beamclaw_project.infra.redis import (
    Command,
    ScriptsSent,
    UnawaitedCommands,
    counter_incr,
    get_call,
    redis_client,
    redis_script_calls,
    redis_script_held_call,
    redis_scripts_call,
    resp_array_head,
    resp_bulks,
)
from beamclaw_project.infra.tasks import tasks_push_commands
from sessions import events
from sessions.runs.kernel import RUN_STEP_TASK
from tests.conftest import queued_message_pop, redis_connection_drop


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


def test_a_thread_kept_connection_that_lost_its_script_or_its_socket_still_runs_each_call_once():
    """A step's text deltas are appended on a connection its thread keeps (redis_script_held_call). A script
    Redis lacks (after a restart), and a connection Redis dropped (a restart, a client timeout), make that
    call again the usual way: each call runs exactly once, and the next ones go on as before."""
    counter = f"bc:test:{uuid.uuid4().hex}"
    source = f"-- held {counter}\nreturn redis.call('INCRBY', KEYS[1], ARGV[1])"
    assert redis_script_held_call(source, [counter], [1]) == 1  # (a script Redis has never seen)
    assert redis_script_held_call(source, [counter], [10]) == 11

    held = infra_redis._thread_held.held.connection
    held.send_command("CLIENT", "ID")
    redis_client().client_kill_filter(_id=held.read_response())
    assert redis_script_held_call(source, [counter], [100]) == 111
    assert redis_script_held_call(source, [counter], [1000]) == 1111
    assert int(redis_client().get(counter)) == 1111


def test_threads_that_ended_give_their_kept_connections_back():
    """Django serves each REST request's sync view on a thread of its own, and the rate limit counts every
    request on its thread's kept connection. Those threads end: their connections must go back to the pool,
    or the web process runs out of connections (and answers 503) after as many requests as its pool holds."""
    counter = f"bc:test:{uuid.uuid4().hex}"
    requests = redis_client().connection_pool.max_connections + 50
    failures = []

    def one_request():
        try:
            counter_incr(counter, ttl_seconds=60)
        except Exception as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    for _ in range(requests):
        thread = threading.Thread(target=one_request)
        thread.start()
        thread.join()
    assert failures == []
    assert int(redis_client().get(counter)) == requests


def test_calls_sent_ahead_give_their_results_later_each_run_once():
    """A step sends its lease, delivery count and abort-flag read, reads its run from Postgres meanwhile, then
    reads the answers (ScriptsSent). A script Redis lacks runs once, after the others, as in a pipeline; a
    connection Redis dropped before the answers came sends the calls again on another."""
    counter = f"bc:test:{uuid.uuid4().hex}"
    source = f"-- sent {counter}\nreturn redis.call('INCRBY', KEYS[1], ARGV[1])"
    with ScriptsSent([(source, [counter], [1]), get_call(counter), (source, [counter], [10])]) as sent:
        assert int(redis_client().get(counter) or 0) == 0  # (refused: Redis has never seen the script)
        assert sent.results() == [1, None, 11]

    # A connection Redis drops while a call waits on it (a restart, a client timeout): the calls go again on
    # another connection, and the one queued behind the wait, which never ran, runs once.
    waiting_list = f"{counter}:list"
    with ScriptsSent([Command("BLPOP", (waiting_list, 30)), (source, [counter], [100])]) as sent:
        redis_connection_drop(sent._connection)
        redis_client().rpush(waiting_list, "x")  # what the calls sent again find at once
        assert sent.results() == [(waiting_list.encode(), b"x"), 111]
    assert int(redis_client().get(counter)) == 111


def test_calls_sent_and_left_unread_do_not_answer_anyone_else():
    """A step whose Postgres read fails leaves without reading Redis's answers: they must not be taken for
    the answers of the next command sent on that connection. (The answer here comes a moment late, so it
    is not yet there for the pool's own check of a returned connection to notice.)"""
    counter = f"bc:test:{uuid.uuid4().hex}"
    redis_client().set(counter, "mine")
    with ScriptsSent([Command("BLPOP", (f"{counter}:empty", 0.2))]):
        pass
    for _ in range(5):  # (the pool lends the connection given back last first)
        assert redis_client().get(counter) == b"mine"


def _push(key: str, value: str) -> bytes:
    return resp_array_head(3) + resp_bulks("RPUSH", key, value)


def test_commands_sent_without_waiting_land_in_order_and_leave_no_answer_behind():
    """A streamed step appends its deltas without waiting for each answer (UnawaitedCommands): however many
    it sends, they land in the order sent, and once settled the connection goes back to the pool with no
    answer left on it to be taken for someone else's."""
    key = f"bc:test:{uuid.uuid4().hex}"
    commands = UnawaitedCommands()
    sent = [str(i) for i in range(UnawaitedCommands.SETTLE_EVERY * 2 + 5)]
    for value in sent:
        commands.send(_push(key, value))
    commands.settle()
    assert [value.decode() for value in redis_client().lrange(key, 0, -1)] == sent
    redis_client().set(f"{key}:mine", "mine")
    for _ in range(5):  # (the pool lends the connection given back last first)
        assert redis_client().get(f"{key}:mine") == b"mine"
    commands.settle()  # (nothing sent since: nothing to read)


def test_a_health_check_falling_due_between_commands_sent_without_waiting_takes_none_of_their_answers():
    """redis-py PINGs a connection idle past its health-check interval before sending on it, and reads the
    answer: between commands sent without waiting, that answer would be one of theirs, and the wait for the
    last one would never end. (A pause between two deltas of a reply longer than the interval; the interval
    is made to lapse here rather than waited out.)"""
    key = f"bc:test:{uuid.uuid4().hex}"
    commands = UnawaitedCommands()
    commands.send(_push(key, "before the pause"))
    commands._connection.next_health_check = 0
    commands.send(_push(key, "after it"))
    commands.settle()
    assert redis_client().lrange(key, 0, -1) == [b"before the pause", b"after it"]


def test_commands_sent_without_waiting_on_a_connection_redis_drops_raise_and_leave_the_first_ones_landed():
    """What a step learns when the connection its deltas go on breaks (a client timeout, a restart): an error
    when it reads the answers, and of the commands sent, those that landed are the first ones, in order (the
    step appends the rest again: tests/sessions/test_delta_appends.py). The next command takes another
    connection."""
    key = f"bc:test:{uuid.uuid4().hex}"
    commands = UnawaitedCommands()
    sent = [str(i) for i in range(5)]
    for value in sent:
        commands.send(_push(key, value))
    redis_connection_drop(commands._connection)
    with pytest.raises(redis.exceptions.ConnectionError):
        commands.send(_push(key, "after the drop"))
        commands.settle()
    landed = [value.decode() for value in redis_client().lrange(key, 0, -1)]
    assert landed == sent[:len(landed)]
    commands.send(_push(key, "next"))
    commands.settle()
    assert redis_client().lrange(key, -1, -1) == [b"next"]


def test_runs_started_together_get_their_first_event_and_a_queued_lease_each():
    run_ids = [uuid.uuid4() for _ in range(3)]
    redis_scripts_call([events.publish_command(run_id, events.RUN_STARTED, {"run_id": str(run_id)}) for run_id in run_ids])
    for run_id in run_ids:
        [first] = events.read_all(run_id)
        assert (first.seq, first.event, first.payload) == (1, events.RUN_STARTED, {"run_id": str(run_id)})

    keys = [f"bc:test:{run_id}:lease" for run_id in run_ids]
    redis_client().set(keys[1], "a-worker's-token")
    assert leases_set(keys, "queued", ttl_ms=60_000, replacing=("queued",)) == [True, False, True]
    assert lease_values(keys) == [b"queued", b"a-worker's-token", b"queued"]


def test_a_first_event_and_a_first_step_go_together_in_order():
    """A run's start publishes run.started and pushes step 0 in one round trip. The event goes as EVAL (with
    the script's text), so a Redis that lost its scripts (after a restart) cannot refuse it and leave it to
    be sent after the step: a worker quick to stream would then publish text before run.started. (Not
    tested by flushing the scripts: that would reach the other test processes sharing this Redis.)"""
    run_id, queue = uuid.uuid4(), tenant_queue(f"push-{uuid.uuid4().hex[:8]}")  # (no worker consumes it)
    publish = events.publish_command(run_id, events.RUN_STARTED, {"run_id": str(run_id)})
    assert publish.name == "EVAL"
    step = tasks_push_commands([(RUN_STEP_TASK, [str(run_id), 0], queue, WORK_PRIORITY)])
    assert [command.name for command in step] == ["LPUSH"]
    seq, pushed = redis_scripts_call([publish, *step])
    assert (seq, pushed) == (1, 1)
    assert [e.event for e in events.read_all(run_id)] == [events.RUN_STARTED]
    message = queued_message_pop(queue, WORK_PRIORITY)
    assert message["headers"]["task"] == RUN_STEP_TASK and message["body"][0] == [str(run_id), 0]

    refused = f"bc:test:{uuid.uuid4().hex}"
    assert redis_scripts_call([Command("SET", (refused, "1")), Command("EXISTS", (refused,))]) == [True, 1]


def test_with_the_broker_on_another_redis_database_the_steps_are_not_pushed_with_the_events():
    with override_settings(CELERY_BROKER_URL="redis://127.0.0.1:6379/9"):
        assert tasks_push_commands([(RUN_STEP_TASK, [str(uuid.uuid4()), 0], tenant_queue("x"), WORK_PRIORITY)]) is None
