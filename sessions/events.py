"""The run event stream (DESIGN §6): one Redis Stream per run, ordered by a per-run `seq`.

Entry ids are `0-<seq>`, so "resume after seq N" is simply XREAD from `0-N`; a Lua script hands out the
seq and appends in one round trip, which keeps the order total even when a step is redelivered to
another worker. Streams expire an hour after their last event; Postgres keeps the final transcript.

Seqs of one stream follow each other without gaps. When Redis loses a stream while its run goes on (a
restart without persistence, a failover), the stream that begins again does not start at 1: its first
seq is the current time in milliseconds, above anything the lost stream held. A reader therefore sees
either the next seq or a jump, and a jump (or a stream whose counter fell behind the reader) means the
events in between are gone: `tail` raises StreamLost and the reader turns to Postgres.

Readers in the web process are pushed each event as it is appended: the script also publishes it on the
channel named after the stream, and the process's one subscriber connection hands it to the run's readers
(beamclaw_project/infra/pubsub.py). The stream stays the record: a reader reads it when it starts, after
the subscriber reconnects, when a pushed seq skips one, and whenever it has waited TAIL_BLOCK_SECONDS.
"""

import asyncio
import json
import time
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii

import redis
from django.conf import settings

from beamclaw_project.infra.draining import DRAIN_TICK_SECONDS, draining
from beamclaw_project.infra.pubsub import RESYNC, channel_hub
from beamclaw_project.infra.redis import (
    Command,
    UnawaitedCommands,
    async_redis,
    redis_client,
    redis_script_held_call,
    resp_array_head,
    resp_bulks,
)

RUN_STARTED = "run.started"
TEXT_DELTA = "text.delta"
TOOL_CALL = "tool.call"
TOOL_RESULT = "tool.result"
RUN_COMPLETED = "run.completed"
RUN_FAILED = "run.failed"
RUN_ABORTED = "run.aborted"
# Older turns of the run's session were summarized before a step (sessions/runs/compaction.py).
COMPACTION = "compaction"
# Not in the Redis stream: told by a reader whose stream was lost (sessions/run_stream.py).
STREAM_INTERRUPTED = "stream.interrupted"
TERMINAL_EVENTS = frozenset({RUN_COMPLETED, RUN_FAILED, RUN_ABORTED})
TAIL_BLOCK_SECONDS = 5.0
STREAM_READ_COUNT = 500

_APPEND_SCRIPT = """
local seq = redis.call('INCR', KEYS[2])
if seq == 1 and ARGV[5] ~= '0' then
  -- Not the run's first event, yet a new stream: Redis lost the one before. Number above it.
  seq = tonumber(ARGV[5])
  redis.call('SET', KEYS[2], seq)
end
redis.call('XADD', KEYS[1], string.format('0-%d', seq), 'e', ARGV[1], 'd', ARGV[2])
local message = string.format('%d', seq) .. '\\n' .. ARGV[1] .. '\\n' .. ARGV[2]
local readers = redis.call('PUBLISH', KEYS[1], message)
if ARGV[4] == '1' then
  -- The terminal event, also for readers waiting only for the end (ending_channel).
  redis.call('PUBLISH', KEYS[1] .. ':end', message)
end
if seq == 1 or ARGV[4] == '1' then
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  redis.call('EXPIRE', KEYS[2], ARGV[3])
end
if ARGV[6] == '1' then
  -- How many processes follow the stream (publish_delta).
  return readers
end
return seq
"""


@dataclass(frozen=True)
class RunEvent:
    seq: int
    event: str
    payload: dict

    def as_dict(self) -> dict:
        return {"seq": self.seq, "event": self.event, "payload": self.payload}


def stream_key(run_id) -> str:
    return f"bc:run:{run_id}:events"


def ending_channel(run_id) -> bytes:
    """Where a run's terminal event alone is published (see tail_ending)."""
    return f"{stream_key(run_id)}:end".encode()


def _seq_key(run_id) -> str:
    return f"bc:run:{run_id}:seq"


def publish(run_id, event: str, payload: dict) -> int:
    """Append an event to the run's stream and return its seq."""
    keys, args = _append_call(run_id, event, payload)
    return int(redis_script_held_call(_APPEND_SCRIPT, keys, args))


def publish_delta(run_id, payload: dict) -> bool:
    """Append a text delta; whether a reader follows the run's stream (a process subscribed to its pushed
    events: a reader of the run's end only is not one)."""
    keys, args = _append_call(run_id, TEXT_DELTA, payload)
    return int(redis_script_held_call(_APPEND_SCRIPT, keys, [*args, "1"])) > 0


class DeltaAppends:
    """A streamed step's text deltas, each appended without waiting for Redis's answer (UnawaitedCommands):
    `settle()` before the run publishes anything else, which must come after them in its stream.

    Each append is the append script sent as EVAL, with its text: an EVALSHA refused because Redis lost its
    scripts (SCRIPT FLUSH) would run nothing, while the appends after it would run once another process loaded
    the script again, a hole in the text nobody could fill in order. The command's bytes are built once, all
    but the delta and the time: packing the script's text and json.dumps per delta were most of an append's
    cost in a thread that had just woken for the model's next event."""

    def __init__(self, run_id):
        keys, (event, _, ttl, refresh_ttl, _) = _append_call(run_id, TEXT_DELTA, {})
        # EVAL, the script, its keys, the event; then the payload; the TTLs; the time (_append_call's order).
        head = ("EVAL", _APPEND_SCRIPT, len(keys), *keys, event)
        self._head = resp_array_head(len(head) + 4) + resp_bulks(*head)
        self._ttls = resp_bulks(ttl, refresh_ttl)
        self._commands = UnawaitedCommands()

    def send(self, payload: dict) -> None:
        """`payload`: {"text", "step"}, appended as publish_delta appends it."""
        data = b'{"text":%b,"step":%d}' % (encode_basestring_ascii(payload["text"]).encode(), payload["step"])
        restart_seq = b"%d" % (time.time_ns() // 1_000_000)
        self._commands.send(self._head + resp_bulks(data) + self._ttls + resp_bulks(restart_seq))

    def settle(self) -> None:
        self._commands.settle()


def followers_call(run_id) -> Command:
    """How many processes follow the run's stream as it comes (publish_delta's readers), to send with other
    calls (redis_scripts_call): hand its result to followers_read."""
    return Command("PUBSUB", ("NUMSUB", stream_key(run_id)))


def followers_read(result: list) -> int:
    return int(result[1])


def publish_command(run_id, event: str, payload: dict) -> Command:
    """publish, to send with commands that must follow it (a run's first step after its run.started), in
    one round trip (redis_scripts_call); its result is the seq. Sent as EVAL, with the script's text: an
    EVALSHA refused because Redis lost the script would be sent again after the commands meant to follow it."""
    keys, args = _append_call(run_id, event, payload)
    return Command("EVAL", (_APPEND_SCRIPT, len(keys), *keys, *args))


def _append_call(run_id, event: str, payload: dict) -> tuple[list, list]:
    """The append script's keys and arguments."""
    ttl = settings.BEAMCLAW["EVENT_STREAM_TTL_SECONDS"]
    refresh_ttl = "1" if event in TERMINAL_EVENTS else "0"
    restart_seq = "0" if event == RUN_STARTED else str(time.time_ns() // 1_000_000)
    return [stream_key(run_id), _seq_key(run_id)], [event, json.dumps(payload, separators=(",", ":")), ttl, refresh_ttl, restart_seq]


def _decode(entry_id, fields) -> RunEvent:
    seq = int(entry_id.split(b"-", 1)[1])
    return RunEvent(seq=seq, event=fields[b"e"].decode(), payload=json.loads(fields[b"d"]))


def _decode_pushed(message: bytes) -> RunEvent:
    seq, event, data = message.split(b"\n", 2)
    return RunEvent(seq=int(seq), event=event.decode(), payload=json.loads(data))


def read_all(run_id, after_seq: int = 0) -> list[RunEvent]:
    entries = redis_client().xrange(stream_key(run_id), min=f"0-{after_seq + 1}")
    return [_decode(entry_id, fields) for entry_id, fields in entries]


def published_text(run_id, step: int) -> str:
    """Text already streamed to clients for one step (used when a crashed step is run again)."""
    return "".join(
        e.payload.get("text", "") for e in read_all(run_id) if e.event == TEXT_DELTA and e.payload.get("step") == step
    )


# Redis cannot be reached: a reader ticks (yields None), waits a little longer each time, and tries again.
_UNREACHABLE = (redis.exceptions.TimeoutError, redis.exceptions.ConnectionError, ConnectionError, TimeoutError)


def _backoff_next(backoff: float, ceiling: float) -> float:
    return min(max(backoff * 2, 0.2), ceiling)


async def tail_ending(run_id, *, block_seconds: float = TAIL_BLOCK_SECONDS):
    """Yield a run's terminal event once it is appended, for a reader that needs only how the run ended (a
    reply that is not streamed): it is pushed that event alone, not every delta. After each `block_seconds`
    without it (and while Redis is unreachable) it looks at the stream's last event: the terminal event
    itself when its push was missed, else the run's latest event when the stream moved on (the run goes on:
    the caller's idle clock starts again), else None.

    Workers older than this reader's code publish no ending; their runs' ends are seen at that look."""
    client = async_redis()
    key = stream_key(run_id)
    channel = ending_channel(run_id)
    hub = channel_hub()
    pushed = None
    look = True  # read the stream's last event before waiting for the push
    last_seq = 0
    backoff = 0.0
    try:
        while True:
            block = DRAIN_TICK_SECONDS if draining() else block_seconds
            try:
                if pushed is None:
                    pushed = await asyncio.wait_for(hub.subscribe(channel), block)
                    look = True
                latest = None
                if look:
                    look = False
                    entries = await client.xrevrange(key, count=1)
                    latest = _decode(*entries[0]) if entries else None
                backoff = 0.0
            except _UNREACHABLE:
                backoff = _backoff_next(backoff, block_seconds)
                yield None
                await asyncio.sleep(backoff)
                continue
            if latest is not None:
                if latest.event in TERMINAL_EVENTS:
                    yield latest
                    return
                if latest.seq != last_seq:  # (the run went on since the last look)
                    last_seq = latest.seq
                    yield latest
            try:
                message = await _next_pushed(pushed, block)
            except TimeoutError:
                look = True
                yield None
                continue
            if message is RESYNC:
                look = True
                continue
            yield _decode_pushed(message)
            return
    finally:
        if pushed is not None:
            hub.unsubscribe(channel, pushed)


class StreamLost(Exception):
    """The run's stream no longer holds what this reader already read: Redis lost it (a restart without
    persistence, a failover) or it expired. Postgres still knows how the run ends."""


async def _stream_lost(client, run_id, last_seq: int) -> bool:
    # The seq counter only grows while the stream lives; lower (or gone) means a new stream began.
    current = await client.get(_seq_key(run_id))
    return current is None or int(current) < last_seq


async def _next_pushed(pushed: asyncio.Queue, block: float):
    """The next pushed message, waiting up to `block` seconds (TimeoutError). One waiting already is taken
    as it is: a reader that keeps up pays for a timer only when it must wait, and asyncio.wait_for would
    wrap every wait in a task of its own (once per delta, a tenth of the web process's CPU per delta)."""
    if not pushed.empty():
        return pushed.get_nowait()
    async with asyncio.timeout(block):
        return await pushed.get()


async def tail(run_id, after_seq: int = 0, *, block_seconds: float = TAIL_BLOCK_SECONDS):
    """Yield a run's events after `after_seq` in order, waiting for new ones, until a terminal event.

    Yields None after each `block_seconds` without an event (and while Redis is unreachable), so the
    caller can send a keep-alive or check on the run. Raises StreamLost when events after this reader's
    position were lost (see the module's docstring).
    """
    client = async_redis()
    key = stream_key(run_id)
    channel = key.encode()
    hub = channel_hub()
    pushed = None  # this reader's queue of pushed events, once subscribed
    last_seq = after_seq
    read_stream = True  # read the stream itself before waiting for pushed events
    backoff = 0.0
    try:
        while True:
            # A web process shutting down wakes its readers more often, so they notice the drain's end.
            block = DRAIN_TICK_SECONDS if draining() else block_seconds
            entries = []
            try:
                if pushed is None:
                    pushed = await asyncio.wait_for(hub.subscribe(channel), block)
                    read_stream = True
                if read_stream:
                    response = await client.xread({key: f"0-{last_seq}"}, count=STREAM_READ_COUNT)
                    entries = response[0][1] if response else []
                    if not entries and last_seq and await _stream_lost(client, run_id, last_seq):
                        raise StreamLost(f"the event stream of run {run_id} was lost after event {last_seq}")
                    read_stream = len(entries) == STREAM_READ_COUNT  # (there may be more)
                backoff = 0.0
            except _UNREACHABLE:
                backoff = _backoff_next(backoff, block_seconds)
                yield None
                await asyncio.sleep(backoff)
                continue
            if entries:
                for entry_id, fields in entries:
                    event = _decode(entry_id, fields)
                    if last_seq and event.seq != last_seq + 1:
                        raise StreamLost(f"the event stream of run {run_id} jumped from event {last_seq} to {event.seq}")
                    last_seq = event.seq
                    yield event
                    if event.event in TERMINAL_EVENTS:
                        return
                continue
            try:
                message = await _next_pushed(pushed, block)
            except TimeoutError:
                read_stream = True  # (an event pushed while the subscriber reconnected was missed: the stream has it)
                yield None
                continue
            if message is RESYNC:  # the subscriber reconnected: what was published meanwhile is in the stream
                read_stream = True
                continue
            event = _decode_pushed(message)
            if event.seq <= last_seq:
                continue  # already read from the stream
            if event.seq != last_seq + 1:
                read_stream = True  # one went missing: the stream has it, or says it is lost
                continue
            last_seq = event.seq
            yield event
            if event.event in TERMINAL_EVENTS:
                return
    finally:
        if pushed is not None:
            hub.unsubscribe(channel, pushed)
