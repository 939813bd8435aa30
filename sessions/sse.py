"""GET /api/runs/{id}/events/: a run's event stream as Server-Sent Events.

Tails a live run and replays a finished one (from the Redis stream while it is kept, else the terminal
event rebuilt from Postgres). Each event's `id:` is its seq, so a reconnecting client (EventSource does
this by itself) resumes after `Last-Event-ID`.
"""

import json

from django.http import JsonResponse, StreamingHttpResponse

from beamclaw_project.asyncdb import db_call
from sessions import events
from sessions.engine import terminal_event_from_db
from sessions.models import Run
from sessions.run_stream import follow_run
from tenants.auth import AuthError, authenticate_key, bearer_token


@db_call
def _authorized_run(authorization: str | None, run_id):
    principal = authenticate_key(bearer_token(authorization), scope="read", what="a run's event stream")
    return Run.objects.filter(pk=run_id, tenant=principal.tenant).first()


def _frame(event: events.RunEvent) -> bytes:
    data = json.dumps({**event.payload, "seq": event.seq}, separators=(",", ":"))
    return f"id: {event.seq}\nevent: {event.event}\ndata: {data}\n\n".encode()


async def _event_frames(run: Run, after_seq: int):
    if run.is_terminal and not await events.async_redis().exists(events.stream_key(run.pk)):
        # The live stream has expired; Postgres still knows how the run ended.
        yield _frame(terminal_event_from_db(run))
        return
    try:
        async for event in follow_run(run.pk, after_seq):
            yield b": keep-alive\n\n" if event is None else _frame(event)
    except TimeoutError as exc:
        yield f"event: error\ndata: {json.dumps({'error': str(exc)})}\n\n".encode()


def _error(status: int, message: str, code: str, retry_after: int | None = None) -> JsonResponse:
    response = JsonResponse({"detail": message, "code": code}, status=status)
    if retry_after:
        response["Retry-After"] = str(retry_after)
    return response


async def run_events(request, run_id):
    if request.method != "GET":
        return _error(405, f"Method {request.method} not allowed.", "method_not_allowed")
    try:
        run = await _authorized_run(request.headers.get("Authorization"), run_id)
    except AuthError as exc:
        return _error(exc.status, exc.message, exc.code, exc.retry_after)
    if run is None:
        return _error(404, "No such run.", "not_found")
    resume_from = request.headers.get("Last-Event-ID") or request.GET.get("after") or "0"
    if not resume_from.isdigit():
        return _error(400, "Last-Event-ID (or ?after=) must be the non-negative integer seq of an event.", "invalid")
    response = StreamingHttpResponse(_event_frames(run, int(resume_from)), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response
