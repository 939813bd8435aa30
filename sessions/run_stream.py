"""Following a run from an async edge (OpenAI SSE, REST SSE, WebSocket).

The Redis stream carries the run's events; Postgres has the last word. When the stream goes quiet
because the terminal event never reached Redis, or when Redis lost the stream under a reader (a
restart without persistence), the ending is rebuilt from Postgres: the reader gets the rest of the
reply when what it was streamed is the start of the stored reply, else a `stream.interrupted` event
saying so, then the terminal event.
"""

import asyncio
import logging
import time

from django.conf import settings

from beamclaw_project.asyncdb import db_call
from beamclaw_project.infra.outages import outage_of
from sessions import events
from sessions.models import Run
from sessions.runs import terminal_event_from_db

logger = logging.getLogger(__name__)

# How often a reader whose stream was lost asks Postgres whether the run has ended.
LOST_STREAM_POLL_SECONDS = 1.0


@db_call
def _terminal_event_if_finished(run_id) -> events.RunEvent | None:
    run = Run.objects.filter(pk=run_id).first()
    return terminal_event_from_db(run) if run is not None else None


async def _terminal_event_or_none(run_id) -> events.RunEvent | None:
    """The ending from Postgres, or None while the run goes on or Postgres cannot be reached."""
    try:
        return await _terminal_event_if_finished(run_id)
    except Exception as exc:
        if outage_of(exc) is None:
            raise
        return None


class _Progress:
    """What a reader has been given so far: the last seq and the reply text per step."""

    def __init__(self, after_seq: int):
        self.last_seq = after_seq
        self.text_by_step: dict[int, list[str]] = {}

    def saw(self, event: events.RunEvent) -> None:
        self.last_seq = event.seq
        if event.event == events.TEXT_DELTA:
            self.text_by_step.setdefault(event.payload.get("step", 0), []).append(event.payload.get("text", ""))

    def next_event(self, name: str, payload: dict) -> events.RunEvent:
        self.last_seq += 1
        return events.RunEvent(seq=self.last_seq, event=name, payload=payload)

    def ending(self, terminal: events.RunEvent) -> list[events.RunEvent]:
        """The events that finish this reader's stream from the terminal event Postgres rebuilt."""
        payload = dict(terminal.payload)
        text, step = payload.get("text"), payload.get("step")
        finish: list[events.RunEvent] = []
        if terminal.event == events.RUN_COMPLETED and text and step is not None:
            streamed = "".join(self.text_by_step.get(step, ()))
            if text.startswith(streamed):
                if len(text) > len(streamed):
                    finish.append(self.next_event(events.TEXT_DELTA, {"text": text[len(streamed):], "step": step}))
            else:
                finish.append(self.next_event(events.STREAM_INTERRUPTED, {
                    "run_id": payload["run_id"],
                    "code": "stream_lost",
                    "error": "The live stream was lost (Redis restarted) and the reply was written again; what "
                             "was streamed is not the start of the final reply. The final event carries the "
                             "whole reply, which is also in the session's transcript.",
                }))
        finish.append(self.next_event(terminal.event, payload))
        return finish


async def follow_run(run_id, after_seq: int = 0, *, idle_timeout: float | None = None, ending_only: bool = False):
    """Yield the run's events in order until its terminal event; None while nothing happens (for
    keep-alives). Raises TimeoutError after `idle_timeout` seconds without events.

    `ending_only`: for a reader that uses nothing but the terminal event (a reply that is not streamed). It
    is not pushed the run's other events (events.tail_ending): where it would have got them it gets None
    every few seconds, and they still count as the run going on."""
    idle_timeout = idle_timeout or settings.BEAMCLAW["RUN_WAIT_TIMEOUT_SECONDS"]
    progress = _Progress(after_seq)
    last_event_at = time.monotonic()
    source = events.tail_ending(run_id) if ending_only else events.tail(run_id, after_seq)
    try:
        async for event in source:
            if event is not None:
                last_event_at = time.monotonic()
                if ending_only and event.event not in events.TERMINAL_EVENTS:
                    yield None
                    continue
                progress.saw(event)
                yield event
                continue
            terminal = await _terminal_event_or_none(run_id)
            if terminal is not None:
                for ending in progress.ending(terminal):
                    yield ending
                return
            if time.monotonic() - last_event_at > idle_timeout:
                raise TimeoutError(f"run {run_id} produced no event for {idle_timeout:.0f}s")
            yield None
        return
    except events.StreamLost as lost:
        logger.warning("%s; following run %s in Postgres", lost, run_id)
    # The stream is gone: wait for the run to end (it is resumed elsewhere) and finish from Postgres.
    while (terminal := await _terminal_event_or_none(run_id)) is None:
        if time.monotonic() - last_event_at > idle_timeout:
            raise TimeoutError(f"run {run_id} produced no event for {idle_timeout:.0f}s")
        yield None
        await asyncio.sleep(LOST_STREAM_POLL_SECONDS)
    for ending in progress.ending(terminal):
        yield ending
