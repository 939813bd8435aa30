"""WebSocket `/ws/dashboard/`: what makes the dashboard's pages live.

Authenticated by the Django session cookie (AuthMiddlewareStack in asgi.py); a handshake without a staff
user is refused with 4403. Browsers send the cookie with any page's WebSocket, so a handshake whose Origin
is another site (not this Host, nor one of CSRF_TRUSTED_ORIGINS) is refused too, as CSRF would refuse its
POST; ALLOWED_HOSTS cannot serve for that, since it is often `*`.

The dashboard pays its own way: nothing on the engine's path knows it exists. A runs page sends
`{"watch": "runs", "tenant"?, "shown"?}` and gets the live-runs table re-rendered (`{"type": "runs",
"html"}`) when it changed, from one query a second (LIVE_POLL_SECONDS) for as long as the page stays open,
plus rows for the runs that finished meanwhile (`{"type": "finished", "html"}`). A run or session page
sends `{"follow": run_id, "after"?: seq}` and gets that run's events as the stream has them
(`{"type": "event", "run_id", "seq", "event", "text"|"html"}`), tailing only the runs being watched.
Bad frames get `{"type": "error", "message"}`.
"""

import asyncio
import json
import uuid
from urllib.parse import urlsplit

from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.template.loader import render_to_string

from beamclaw_project.asyncdb import db_call
from beamclaw_project.dashboard import present, selectors
from beamclaw_project.dashboard.access import is_operator
from beamclaw_project.infra.outages import outage_of
from sessions import events
from sessions.run_stream import follow_run

CLOSE_FORBIDDEN = 4403
MAX_FRAME_BYTES = 64 * 1024


def _conf(name: str):
    return settings.BEAMCLAW_DASHBOARD[name]


@db_call
def _tenant_of(slug: str):
    return selectors.tenant_by_slug(slug=slug)


@db_call
def _run_exists(run_id) -> bool:
    return selectors.run_by_id(run_id=run_id) is not None


@db_call
def _live_runs(tenant, shown: set) -> tuple[set, str, str]:
    """The live runs' ids, the live table, and rows for the shown runs that have finished since."""
    live = selectors.runs_live(tenant=tenant)
    ids = {run.pk for run in live}
    table = render_to_string("dashboard/_live_runs.html", {"live_runs": live})
    finished = selectors.runs_by_ids(ids=shown - ids) if shown - ids else []
    rows = "".join(render_to_string("dashboard/_run_row.html", {"run": run}) for run in finished if run.is_terminal)
    return ids, table, rows


def same_origin(scope) -> bool:
    """Whether the handshake comes from one of this site's pages (or from no browser page at all)."""
    headers = dict(scope.get("headers", ()))
    origin = headers.get(b"origin", b"").decode("latin-1")
    if not origin:
        return True
    # Host and port only: behind a TLS proxy the page is https while the hop to Daphne is plain.
    host = headers.get(b"host", b"").decode("latin-1")
    return urlsplit(origin).netloc == host or origin in settings.CSRF_TRUSTED_ORIGINS


def _uuid(value) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


class DashboardConsumer(AsyncWebsocketConsumer):
    async def connect(self):
        self.tasks: dict[str, asyncio.Task] = {}
        if not (same_origin(self.scope) and is_operator(self.scope.get("user"))):
            await self.close(code=CLOSE_FORBIDDEN)
            return
        await self.accept()

    async def disconnect(self, code):
        for task in self.tasks.values():
            task.cancel()

    async def send_json(self, data: dict) -> None:
        await self.send(text_data=json.dumps(data, separators=(",", ":")))

    async def _error(self, message: str) -> None:
        await self.send_json({"type": "error", "message": message})

    async def receive(self, text_data=None, bytes_data=None):
        if text_data is None or len(text_data) > MAX_FRAME_BYTES:
            await self._error(f"Send JSON text frames of at most {MAX_FRAME_BYTES} bytes.")
            return
        try:
            frame = json.loads(text_data)
        except ValueError:
            frame = None
        if not isinstance(frame, dict):
            await self._error('Send a JSON object: {"watch": "runs"} or {"follow": "<run id>"}.')
        elif frame.get("watch") == "runs":
            await self._watch_runs(frame)
        elif "follow" in frame:
            await self._follow(frame)
        else:
            await self._error('Unknown request: send {"watch": "runs"} or {"follow": "<run id>"}.')

    async def _watch_runs(self, frame: dict) -> None:
        tenant = None
        if frame.get("tenant"):
            tenant = await _tenant_of(str(frame["tenant"]))
            if tenant is None:
                await self._error(f"No tenant '{frame['tenant']}'.")
                return
        raw_shown = frame.get("shown") if isinstance(frame.get("shown"), list) else []
        shown = {run_id for run_id in map(_uuid, raw_shown[: selectors.LIVE_RUNS_SHOWN]) if run_id is not None}
        if (previous := self.tasks.pop("runs", None)) is not None:
            previous.cancel()
        self.tasks["runs"] = asyncio.create_task(self._poll_runs(tenant, shown))

    async def _poll_runs(self, tenant, shown: set) -> None:
        sent = None
        while True:
            try:
                shown, table, finished_rows = await _live_runs(tenant, shown)
            except Exception as exc:
                if (store := outage_of(exc)) is None:
                    raise
                await self._error(f"{store} is unavailable; the live list resumes when it is back.")
            else:
                if finished_rows:
                    await self.send_json({"type": "finished", "html": finished_rows})
                if table != sent:
                    await self.send_json({"type": "runs", "html": table})
                    sent = table
            await asyncio.sleep(_conf("LIVE_POLL_SECONDS"))

    async def _follow(self, frame: dict) -> None:
        run_id = _uuid(frame["follow"])
        after = frame.get("after", 0)
        if run_id is None or isinstance(after, bool) or not isinstance(after, int) or after < 0:
            await self._error('Send {"follow": "<run id>", "after": <seq, 0 or more>}.')
            return
        key = f"run:{run_id}"
        if key in self.tasks and not self.tasks[key].done():
            return
        if sum(name.startswith("run:") and not task.done() for name, task in self.tasks.items()) >= _conf("MAX_FOLLOWED_RUNS"):
            await self._error(f"This page follows {_conf('MAX_FOLLOWED_RUNS')} runs already; close another first.")
            return
        if not await _run_exists(run_id):
            await self._error(f"No run {run_id}.")
            return
        self.tasks[key] = asyncio.create_task(self._tail(run_id, after))

    async def _tail(self, run_id, after: int) -> None:
        while True:
            try:
                async for event in follow_run(run_id, after):
                    if event is None:
                        continue
                    after = event.seq
                    await self.send_json(self._event_frame(run_id, event))
                return
            except TimeoutError:
                # A run may wait for an approval or a deferred tool call far longer than the idle timeout.
                continue

    @staticmethod
    def _event_frame(run_id, event: events.RunEvent) -> dict:
        frame = {"type": "event", "run_id": str(run_id), "seq": event.seq, "event": event.event}
        if event.event == events.TEXT_DELTA:
            frame.update(text=event.payload.get("text", ""), step=event.payload.get("step", 0))
        else:
            frame["html"] = render_to_string("dashboard/_event.html", {"ev": present.event_display(event)})
        return frame
