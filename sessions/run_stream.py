"""Following a run from an async edge (OpenAI SSE, REST SSE, WebSocket)."""

import time

from django.conf import settings

from beamclaw_project.asyncdb import db_call
from sessions import events
from sessions.models import Run
from sessions.runs import terminal_event_from_db


@db_call
def _terminal_event_if_finished(run_id) -> events.RunEvent | None:
    run = Run.objects.filter(pk=run_id).first()
    return terminal_event_from_db(run) if run is not None else None


async def follow_run(run_id, after_seq: int = 0, *, idle_timeout: float | None = None):
    """Yield the run's events in order until its terminal event; None while nothing happens (for
    keep-alives). If the stream went quiet because the terminal event never reached Redis, the terminal
    event is rebuilt from Postgres. Raises TimeoutError after `idle_timeout` seconds without events."""
    idle_timeout = idle_timeout or settings.BEAMCLAW["RUN_WAIT_TIMEOUT_SECONDS"]
    last_event_at = time.monotonic()
    async for event in events.tail(run_id, after_seq):
        if event is not None:
            last_event_at = time.monotonic()
            yield event
            continue
        terminal = await _terminal_event_if_finished(run_id)
        if terminal is not None:
            yield terminal
            return
        if time.monotonic() - last_event_at > idle_timeout:
            raise TimeoutError(f"run {run_id} produced no event for {idle_timeout:.0f}s")
        yield None
