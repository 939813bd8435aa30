"""GET /api/runs/{id}/events/: a run's event stream as Server-Sent Events.

Tails a live run and replays a finished one (from the Redis stream while it is kept, else the terminal
event rebuilt from Postgres). Each event's `id:` is its seq, so a reconnecting client (EventSource does
this by itself) resumes after `Last-Event-ID`.
"""

import json
import re

from django.http import HttpResponse, JsonResponse, StreamingHttpResponse

from beamclaw_project.asyncdb import db_call
from beamclaw_project.infra.draining import draining
from beamclaw_project.infra.redis import async_redis
from sessions import events
from sessions.models import Run
from sessions.run_stream import follow_run
from sessions.runs import terminal_event_from_db
from sessions.selectors import run_of
from tenants.auth import AuthError, authenticate_key, bearer_token

# Stream entry ids are 64-bit in Redis: a larger resume point is a Redis error that used to surface
# mid-stream. Seqs count events of one run, so the signed 64-bit range is far more than enough.
MAX_RESUME_SEQ = 2**63 - 1
_DIGITS = re.compile(r"[0-9]{1,19}")


@db_call
def _authorized_run(authorization: str | None, run_id):
    principal = authenticate_key(bearer_token(authorization), scope="read", what="a run's event stream")
    return run_of(tenant=principal.tenant, run_id=run_id)


def _frame(event: events.RunEvent) -> bytes:
    data = json.dumps({**event.payload, "seq": event.seq}, separators=(",", ":"))
    return f"id: {event.seq}\nevent: {event.event}\ndata: {data}\n\n".encode()


# Ends a stream when this web process shuts down: EventSource reconnects after `retry` ms (to another web
# process), sending Last-Event-ID, and the stream resumes where it stopped.
RECONNECT_FRAME = b": the server is restarting; reconnect with Last-Event-ID\nretry: 1000\n\n"


async def _event_frames(run: Run, after_seq: int):
    if run.is_terminal and not await async_redis().exists(events.stream_key(run.pk)):
        # The live stream has expired; Postgres still knows how the run ended.
        yield _frame(terminal_event_from_db(run))
        return
    try:
        async for event in follow_run(run.pk, after_seq):
            if draining():
                yield RECONNECT_FRAME
                return
            yield b": keep-alive\n\n" if event is None else _frame(event)
    except TimeoutError as exc:
        yield f"event: error\ndata: {json.dumps({'error': str(exc)})}\n\n".encode()


def _error(status: int, message: str, code: str, retry_after: int | None = None) -> JsonResponse:
    response = JsonResponse({"detail": message, "code": code}, status=status)
    if retry_after:
        response["Retry-After"] = str(retry_after)
    return response


def _resume_point(value: str) -> int | None:
    # str.isdigit() also accepts digits such as "²" that int() refuses, hence the explicit ASCII pattern.
    if not _DIGITS.fullmatch(value.strip()):
        return None
    seq = int(value)
    return seq if seq <= MAX_RESUME_SEQ else None


async def run_events(request, run_id):
    if request.method not in ("GET", "HEAD"):
        response = _error(405, f"Method {request.method} not allowed.", "method_not_allowed")
        response["Allow"] = "GET, HEAD"
        return response
    try:
        run = await _authorized_run(request.headers.get("Authorization"), run_id)
    except AuthError as exc:
        return _error(exc.status, exc.message, exc.code, exc.retry_after)
    if run is None:
        return _error(404, "Run not found.", "not_found")
    resume_from = _resume_point(request.headers.get("Last-Event-ID") or request.GET.get("after") or "0")
    if resume_from is None:
        return _error(
            400, f"Last-Event-ID (or ?after=) must be the seq of an event: an integer from 0 to {MAX_RESUME_SEQ}.",
            "invalid",
        )
    if request.method == "HEAD":
        # What a GET would answer, without following the run.
        response = HttpResponse(content_type="text/event-stream")
    else:
        response = StreamingHttpResponse(_event_frames(run, resume_from), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response
