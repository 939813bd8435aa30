"""A streamed step's text deltas are appended to its run's stream without waiting for each answer
(events.DeltaAppends, sessions/runs/step.py's DeltaPublisher). Readers still get every character once and in
order: when the connection they go on breaks, and before whatever the step publishes after them.

These publish in this process against the suite's Redis; a run id is only a stream's name."""

import uuid

import pytest
import redis

from beamclaw_project.infra.redis import redis_client
from sessions import events
from sessions.runs.step import DeltaPublisher
from tests.conftest import redis_connection_drop


class _LeaseHeld:
    def lost(self) -> bool:
        return False


def _publisher(run_id, *, skip: int = 0) -> DeltaPublisher:
    return DeltaPublisher(run_id, 0, skip=skip, lease=_LeaseHeld(), tenant="t", run_started_at=None)


def _drop_the_appends_connection(publisher: DeltaPublisher) -> None:
    """Redis drops the connection the deltas go on (a client timeout, a restart)."""
    redis_connection_drop(publisher.appends._commands._connection)


def _stream(run_id) -> list[events.RunEvent]:
    stream = events.read_all(run_id)
    assert [event.seq for event in stream] == list(range(1, len(stream) + 1)), "no event lost or repeated"
    return stream


def test_a_delta_appended_without_waiting_is_the_event_a_waiting_append_makes():
    """DeltaAppends builds the append's command itself (all but the delta once per step): readers get the
    same event, byte for byte, whatever the text holds."""
    waiting, unawaited = uuid.uuid4(), uuid.uuid4()
    for run_id in (waiting, unawaited):
        events.publish(run_id, events.RUN_STARTED, {"run_id": "the same"})
    appends = events.DeltaAppends(unawaited)
    for text in ("plain", 'a "quote", a \\ and a\nnew line\t', "é ☃ 😀 中文", "\x00\x1f\ud800", ""):
        for step in (0, 12):
            events.publish_delta(waiting, {"text": text, "step": step})
            appends.send({"text": text, "step": step})
    appends.settle()

    def raw(run_id):
        return redis_client().xrange(events.stream_key(run_id))

    assert raw(unawaited) == raw(waiting) and len(raw(waiting)) == 11


def test_a_streamed_step_s_deltas_land_in_order_before_what_the_step_publishes_next():
    run_id = uuid.uuid4()
    events.publish(run_id, events.RUN_STARTED, {"run_id": str(run_id)})
    publisher = _publisher(run_id)
    words = [f"word{i} " for i in range(200)]
    for word in words:
        publisher(word)
    publisher.close()
    events.publish(run_id, events.RUN_COMPLETED, {"text": "".join(words)})
    stream = _stream(run_id)
    assert stream[-1].event == events.RUN_COMPLETED, "the run's end comes after every delta"
    assert "".join(e.payload["text"] for e in stream if e.event == events.TEXT_DELTA) == "".join(words)


@pytest.mark.parametrize("skip", [0, len("word0 word1 ")], ids=["first attempt", "an attempt after a crash"])
def test_a_streamed_step_s_text_reaches_its_stream_once_when_the_appends_connection_breaks(skip):
    """What landed before the drop stays, the rest is appended again: every character once, in order. An
    attempt that resumes a crashed one's stream (it skips what that one streamed) mends only its own part."""
    run_id = uuid.uuid4()
    events.publish(run_id, events.RUN_STARTED, {"run_id": str(run_id)})
    words = [f"word{i} " for i in range(40)]
    text = "".join(words)
    if skip:
        events.publish_delta(run_id, {"text": text[:skip], "step": 0})  # (the crashed attempt's)
    publisher = _publisher(run_id, skip=skip)
    for word in words[:20]:
        publisher(word)
    _drop_the_appends_connection(publisher)
    for word in words[20:]:
        publisher(word)
    publisher.close()
    assert events.published_text(run_id, 0) == text
    _stream(run_id)


def test_a_streamed_step_whose_stream_redis_lost_does_not_mend_it():
    """Redis lost the stream itself (a restart without persistence) while the step appended to it: the step
    cannot tell what its readers got, so it appends nothing in its place; it fails as when Redis is away,
    and the run resumes (the readers were told their stream was lost)."""
    run_id = uuid.uuid4()
    events.publish(run_id, events.RUN_STARTED, {"run_id": str(run_id)})
    events.publish_delta(run_id, {"text": "word0 word1 ", "step": 0})  # (a crashed attempt's)
    publisher = _publisher(run_id, skip=len("word0 word1 "))
    publisher("word0 word1 word2 ")
    redis_client().delete(events.stream_key(run_id))
    _drop_the_appends_connection(publisher)
    publisher("word3 ")
    with pytest.raises(redis.exceptions.ConnectionError):
        publisher.close()
    assert events.published_text(run_id, 0) == ""
