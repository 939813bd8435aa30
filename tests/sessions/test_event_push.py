"""A reader of a run's events is pushed each event as it is appended (sessions/events.py, infra/pubsub.py),
and still gets every event once and in order when a push never comes: the stream is the record.

These read with `events.tail` in this process against the suite's Redis; a run id is only a stream's name."""

import asyncio
import json
import uuid

import pytest
import redis
from django.conf import settings

from beamclaw_project.infra import pubsub
from beamclaw_project.infra.pubsub import ChannelHub, channel_hub
from sessions import events

# Long enough that no reader here could pass by waiting out its block and reading the stream on a timer.
BLOCK_SECONDS = 120


async def _take(reader, n: int) -> list[events.RunEvent]:
    taken = []
    while len(taken) < n:
        event = await asyncio.wait_for(anext(reader), 30)
        if event is not None:
            taken.append(event)
    return taken


async def _reading_after_start(run_id):
    """A reader of a started run that has read the start and waits for what comes next."""
    events.publish(run_id, events.RUN_STARTED, {"run_id": str(run_id)})
    reader = events.tail(run_id, block_seconds=BLOCK_SECONDS)
    await _take(reader, 1)
    return reader


def _text(i: int) -> dict:
    return {"text": f"part {i}", "step": 0}


def test_a_reader_gets_what_the_stream_held_then_what_is_pushed_once_each():
    run_id = uuid.uuid4()

    async def scenario():
        events.publish(run_id, events.RUN_STARTED, {"run_id": str(run_id)})
        events.publish(run_id, events.TEXT_DELTA, _text(1))
        reader = events.tail(run_id, block_seconds=BLOCK_SECONDS)
        first = await _take(reader, 2)  # from the stream: nothing was pushed to this reader yet
        for i in range(2, 6):
            events.publish(run_id, events.TEXT_DELTA, _text(i))
        pushed = await _take(reader, 4)
        events.publish(run_id, events.RUN_COMPLETED, {"run_id": str(run_id), "text": "done"})
        last = await _take(reader, 1)
        with pytest.raises(StopAsyncIteration):
            await anext(reader)
        return first + pushed + last

    seen = asyncio.run(scenario())
    assert [e.seq for e in seen] == list(range(1, 8))
    assert [e.payload.get("text") for e in seen[1:6]] == [f"part {i}" for i in range(1, 6)]
    assert seen[-1].event == events.RUN_COMPLETED


def test_an_event_that_was_appended_but_never_pushed_is_read_from_the_stream_in_its_place():
    run_id, client = uuid.uuid4(), redis.Redis.from_url(settings.REDIS_URL)

    async def scenario():
        reader = await _reading_after_start(run_id)
        # Event 2 reaches the stream but not the channel (as while a subscriber reconnects) ...
        seq = client.incr(f"bc:run:{run_id}:seq")
        client.xadd(events.stream_key(run_id), {"e": events.TEXT_DELTA, "d": json.dumps(_text(2))}, id=f"0-{seq}")
        # ... and event 3 is pushed: the reader sees the gap and reads 2 from the stream before 3.
        events.publish(run_id, events.TEXT_DELTA, _text(3))
        return await _take(reader, 2)

    seen = asyncio.run(scenario())
    assert [(e.seq, e.payload["text"]) for e in seen] == [(2, "part 2"), (3, "part 3")]


def test_readers_catch_up_on_what_was_published_while_the_subscriber_was_disconnected():
    run_id, client = uuid.uuid4(), redis.Redis.from_url(settings.REDIS_URL)

    async def scenario():
        reader = await _reading_after_start(run_id)
        hub = channel_hub()
        host, port = hub._protocol.transport.get_extra_info("sockname")[:2]
        # The process's one subscriber connection is cut (a Redis restart or failover does the same) and
        # events are published while it is away: nobody hears them.
        client.client_kill_filter(_type="pubsub", addr=f"{host}:{port}")
        for i in range(2, 5):
            events.publish(run_id, events.TEXT_DELTA, _text(i))
        events.publish(run_id, events.RUN_COMPLETED, {"run_id": str(run_id), "text": "done"})
        return await _take(reader, 4)

    seen = asyncio.run(scenario())
    assert [e.seq for e in seen] == [2, 3, 4, 5] and seen[-1].event == events.RUN_COMPLETED


def test_a_reader_of_the_ending_alone_is_pushed_the_terminal_event_and_not_the_deltas():
    """A reply that is not streamed waits for the run's end only (events.tail_ending): the deltas are not
    pushed to it (each would cost the web process a read and a decode), the terminal event is."""
    run_id = uuid.uuid4()

    async def scenario():
        events.publish(run_id, events.RUN_STARTED, {"run_id": str(run_id)})
        reader = events.tail_ending(run_id, block_seconds=BLOCK_SECONDS)
        assert (await anext(reader)).seq == 1  # (the stream's latest event when it came: the run goes on)
        pending = asyncio.ensure_future(anext(reader))
        await asyncio.sleep(0)
        queues = channel_hub()._queues
        assert events.ending_channel(run_id) in queues and events.stream_key(run_id).encode() not in queues
        for i in range(1, 4):
            events.publish(run_id, events.TEXT_DELTA, _text(i))
        events.publish(run_id, events.RUN_COMPLETED, {"run_id": str(run_id), "text": "done"})
        ending = await asyncio.wait_for(pending, 30)
        with pytest.raises(StopAsyncIteration):
            await anext(reader)
        late = [event async for event in events.tail_ending(run_id, block_seconds=BLOCK_SECONDS)]
        return ending, late

    ending, late = asyncio.run(scenario())
    assert (ending.seq, ending.event, ending.payload["text"]) == (5, events.RUN_COMPLETED, "done")
    assert [(e.seq, e.event) for e in late] == [(5, events.RUN_COMPLETED)]  # (a reader that came after the end)


def test_a_delta_append_tells_whether_a_reader_follows_the_run():
    """A whole reply's deltas wait longer while nobody follows the run (sessions/runs/delta_window.py): the
    append says whether a process is subscribed to the run's pushed events. A reader of the ending alone (a
    reply that is not streamed) does not follow it."""
    run_id = uuid.uuid4()

    async def scenario():
        events.publish(run_id, events.RUN_STARTED, {"run_id": str(run_id)})
        followed = [events.publish_delta(run_id, _text(1))]
        ending = events.tail_ending(run_id, block_seconds=BLOCK_SECONDS)
        await anext(ending)  # (subscribed to the ending)
        followed.append(events.publish_delta(run_id, _text(2)))
        reader = events.tail(run_id, block_seconds=BLOCK_SECONDS)
        await _take(reader, 3)  # (subscribed, and read what the stream held)
        followed.append(events.publish_delta(run_id, _text(3)))
        assert (await _take(reader, 1))[0].payload == _text(3)
        await reader.aclose()
        await ending.aclose()
        for attempt in range(100):  # (the unsubscription reaches Redis on the subscriber's own connection)
            if not events.publish_delta(run_id, _text(4 + attempt)):
                break
            await asyncio.sleep(0.05)
        else:
            followed.append(True)
        return followed

    assert asyncio.run(scenario()) == [False, False, True]


def test_a_reader_of_the_ending_alone_hears_the_run_go_on_and_finds_an_ending_whose_push_it_missed():
    """Every few seconds without its ending, the reader looks at the stream: an event appended since says
    the run goes on (a reply waiting for a long run does not time out while the run works), and a terminal
    event whose push never came is the ending. (About that look's interval: shortened here, for this test.)"""
    run_id, client = uuid.uuid4(), redis.Redis.from_url(settings.REDIS_URL)

    async def scenario():
        events.publish(run_id, events.RUN_STARTED, {"run_id": str(run_id)})
        reader = events.tail_ending(run_id, block_seconds=0.2)
        seen = [await anext(reader)]
        events.publish(run_id, events.TEXT_DELTA, _text(1))
        while seen[-1] is None or seen[-1].seq < 2:  # (the look after a quiet interval finds the delta)
            seen.append(await anext(reader))
        seen.append(await anext(reader))  # nothing new since: a tick
        # The terminal event reaches the stream but not the channel (as while a subscriber reconnects).
        seq = client.incr(f"bc:run:{run_id}:seq")
        payload = json.dumps({"run_id": str(run_id), "text": "done"})
        client.xadd(events.stream_key(run_id), {"e": events.RUN_COMPLETED, "d": payload}, id=f"0-{seq}")
        seen += [event async for event in reader]
        return seen

    seen = asyncio.run(scenario())
    assert [(e.seq, e.event) for e in seen if e is not None] == [
        (1, events.RUN_STARTED), (2, events.TEXT_DELTA), (3, events.RUN_COMPLETED)
    ]
    assert seen[-2] is None  # (no event since the delta: a plain tick)


def test_a_subscriber_connection_without_subscriptions_stays_up_across_pings(monkeypatch):
    """Once its last reader leaves, the hub's connection is out of pub/sub mode and Redis answers its pings
    with a plain PONG: that is an answer too, not a dead connection to drop with a warning."""
    monkeypatch.setattr(pubsub, "PING_SECONDS", 1.0)  # (this test is about the ping; it shortens it for itself)

    async def until(predicate):
        async with asyncio.timeout(10):
            while not predicate():
                await asyncio.sleep(0.01)

    async def scenario():
        hub, channel = ChannelHub(settings.REDIS_URL), f"bc:test:{uuid.uuid4().hex}".encode()
        pings_on = []  # the connection each ping went out on
        send = hub._send

        def recording_send(*parts):
            if parts == (b"PING",):
                pings_on.append(hub._protocol)
            send(*parts)

        hub._send = recording_send
        hub.unsubscribe(channel, await hub.subscribe(channel))
        connection = hub._protocol
        # A second ping goes out only if the first was answered: else the connection is dropped instead, and
        # the next ping goes out on a new one. (Watching the awaiting-answer flag instead missed the moment:
        # the answer comes back within a millisecond.)
        await until(lambda: len(pings_on) >= 2)
        kept = pings_on[:2] == [connection, connection] and not connection.closed.done()
        hub._task.cancel()
        return kept

    assert asyncio.run(scenario()), "the idle connection was dropped as if it had not answered"
