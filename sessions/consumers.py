"""WebSocket `/ws/`: the JSON frame protocol of DESIGN §7.

Requests `{"type":"req","id","method","params"}` get `{"type":"res","id","ok","payload"|"error"}`; run events
arrive as `{"type":"event","event","payload","seq"}` (seq is the run's own event seq; payload carries
`run_id`). The first frame must be `connect {"token"}`. A socket follows the sessions it sends to or
subscribes to: every run of those sessions streams to it, whoever started the run.

Before closing, the server sends a last `res` frame saying why (close reasons are limited to 123 bytes, and
some clients do not show them); the close frame carries the reason too.
Close codes: 1009 frame over MAX_FRAME_BYTES, 4400 first frame not a connect request, 4401 bad API key,
4403 tenant suspended, 4408 no connect in time, 4429 rate limited at connect, 4503 Redis or PostgreSQL
unavailable at connect (a request during such an outage gets an `unavailable` error with `retry_after`).

Approval events reach a socket twice over: in the stream of a run it follows, and through the tenant's
channel-layer group (which also covers approvals of runs it does not follow). Each is delivered once, by
whichever copy comes first, and a `requested` that arrives after its approval's `resolved` is dropped, so
a client never shows a decided approval as pending.
"""

import asyncio
import json
import uuid
from collections import OrderedDict

from channels.generic.websocket import AsyncWebsocketConsumer
from django.core.serializers.json import DjangoJSONEncoder

from beamclaw_project import json_input
from beamclaw_project.asyncdb import db_call
from beamclaw_project.errors import DomainError, InvalidInput
from beamclaw_project.infra.outages import RETRY_AFTER_SECONDS, outage_of
from sessions import events, notify
from sessions.content import content_parse
from sessions.images import images_fetch
from sessions.models import AgentSession, Message, Run
from sessions.run_stream import follow_run
from sessions.runs import (
    compaction_outcome_await,
    compaction_pending_message,
    compaction_request,
    run_abort,
    run_submit,
)
from sessions.selectors import active_run_of, run_of, session_of
from sessions.serializers import MessageSerializer, RunSerializer, SessionSerializer
from sessions.services import session_create, session_reset
from tenants.auth import AuthError, authenticate_key
from tenants.scopes import websocket_scope
from tenants.selectors import agent_by_slug, agents_of
from tenants.serializers import AgentSerializer

PROTOCOL_VERSION = 1
CONNECT_TIMEOUT_SECONDS = 10
# Text frames beyond this many bytes (UTF-8) close the socket with 1009. Below Daphne's own message limit
# (1 MiB unless raised), which closes with 1009 before the frame reaches this consumer.
MAX_FRAME_BYTES = 512 * 1024
CLOSE_MESSAGE_TOO_BIG = 1009
# Approval ids whose events this socket has delivered; old ones age out (their events stopped long ago).
APPROVALS_REMEMBERED = 10_000
CLOSE_CODES = {401: 4401, 403: 4403, 429: 4429}
# A connect frame that could not be checked because Redis or PostgreSQL is down: reconnect later.
CLOSE_UNAVAILABLE = 4503
EVENTS = [
    events.RUN_STARTED, events.TEXT_DELTA, events.TOOL_CALL, events.TOOL_RESULT,
    "approval.requested", "approval.resolved", events.RUN_COMPLETED, events.RUN_FAILED, events.RUN_ABORTED,
    events.STREAM_INTERRUPTED, events.COMPACTION,
]


class RequestError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def domain_error_frame(exc: DomainError) -> RequestError:
    """A service's refusal as an error frame: bad input is `invalid_params`, as the consumer's own checks of
    params say; anything else keeps its code (`not_found`, `conflict`, `rate_limited`, ...)."""
    return RequestError("invalid_params" if isinstance(exc, InvalidInput) else exc.code, exc.message)


def _dumps(data) -> str:
    return json.dumps(data, cls=DjangoJSONEncoder, separators=(",", ":"))


def _uuid_param(params: dict, name: str) -> uuid.UUID:
    value = params.get(name)
    try:
        return uuid.UUID(str(value))
    except (ValueError, TypeError):
        raise RequestError("invalid_params", f"params.{name} must be an id (UUID).")


def _text_param(params: dict, name: str, *, required: bool = True) -> str | None:
    value = params.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise RequestError("invalid_params", f"params.{name} must be a non-empty string.")
    return value


def _limit_param(params: dict, default: int = 100, maximum: int = 1000) -> int:
    value = params.get("limit", default)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise RequestError("invalid_params", f"params.limit must be an integer from 1 to {maximum}.")
    return value


# --- the work behind each method, run on executor threads --------------------------------------------


def _session_of(tenant, session_id) -> AgentSession:
    session = session_of(tenant=tenant, session_id=session_id)
    if session is None:
        raise RequestError("not_found", f"No session {session_id}.")
    return session


@db_call
def _agents_list(tenant) -> list:
    return AgentSerializer(agents_of(tenant=tenant), many=True).data


@db_call
def _sessions_list(tenant, params) -> list:
    sessions = AgentSession.objects.filter(tenant=tenant).select_related("agent").order_by("-updated_at")
    if params.get("agent") is not None:
        sessions = sessions.filter(agent__slug=_text_param(params, "agent"))
    if params.get("status") is not None:
        if params["status"] not in AgentSession.Status.values:
            raise RequestError("invalid_params", f"params.status must be one of {', '.join(AgentSession.Status.values)}.")
        sessions = sessions.filter(status=params["status"])
    return SessionSerializer(sessions[: _limit_param(params)], many=True).data


@db_call
def _sessions_create(tenant, params) -> dict:
    slug = _text_param(params, "agent")
    agent = agent_by_slug(tenant=tenant, slug=slug)
    if agent is None:
        raise RequestError("not_found", f"No agent '{slug}'.")
    queue_mode = params.get("queue_mode")
    if queue_mode is not None and queue_mode not in AgentSession.QueueMode.values:
        raise RequestError("invalid_params", f"params.queue_mode must be one of {', '.join(AgentSession.QueueMode.values)}.")
    session = session_create(
        tenant=tenant, agent=agent, key=_text_param(params, "key", required=False), queue_mode=queue_mode
    )
    return SessionSerializer(session).data


@db_call
def _sessions_history(tenant, params) -> dict:
    session = _session_of(tenant, _uuid_param(params, "session"))
    messages = Message.objects.filter(session=session).order_by("seq")
    after = params.get("after_seq", 0)
    if isinstance(after, bool) or not isinstance(after, int) or after < 0:
        raise RequestError("invalid_params", "params.after_seq must be a non-negative integer.")
    messages = messages.filter(seq__gt=after)[: _limit_param(params)]
    return {"session": str(session.pk), "messages": MessageSerializer(messages, many=True).data}


@db_call
def _sessions_reset(tenant, params) -> dict:
    session = _session_of(tenant, _uuid_param(params, "session"))
    archive = session_reset(session=session)
    session.refresh_from_db()
    return {"session": SessionSerializer(session).data, "archived_session": str(archive.pk)}


@db_call
def _sessions_compact_request(tenant, params) -> str:
    return compaction_request(session=_session_of(tenant, _uuid_param(params, "session")))


async def _compaction_outcome(session_id, request_id: str) -> dict:
    outcome = await compaction_outcome_await(request_id)
    if outcome is None:
        raise RequestError("compaction_pending", compaction_pending_message(session_id))
    if outcome["status"] != 200:
        raise RequestError(outcome["code"], outcome["message"])
    return outcome["compaction"]


@db_call
def _active_run_id(tenant, session_id) -> str | None:
    run = active_run_of(session=_session_of(tenant, session_id))
    return str(run.pk) if run else None


@db_call
def _chat_send(tenant, params) -> dict:
    session = _session_of(tenant, _uuid_param(params, "session"))
    content = images_fetch(content_parse(params.get("message"), where="params.message"))
    mode = params.get("mode")
    if mode is not None and mode not in AgentSession.QueueMode.values:
        raise RequestError("invalid_params", f"params.mode must be one of {', '.join(AgentSession.QueueMode.values)}.")
    run = run_submit(session=session, content=content, trigger=Run.Trigger.WEBSOCKET, mode=mode)
    return {"run_id": str(run.pk), "session": str(session.pk), "status": run.status}


@db_call
def _chat_abort(tenant, params) -> dict:
    if params.get("run_id") is not None:
        run = run_of(tenant=tenant, run_id=_uuid_param(params, "run_id"))
        if run is None:
            raise RequestError("not_found", f"No run {params['run_id']}.")
    else:
        run = active_run_of(session=_session_of(tenant, _uuid_param(params, "session")))
        if run is None:
            raise RequestError("not_found", "The session has no active run.")
    run_abort(run=run, reason="aborted over WebSocket")
    run.refresh_from_db()
    return RunSerializer(run).data


@db_call
def _approvals_list(tenant, params) -> list:
    from tools.models import Approval
    from tools.serializers import ApprovalSerializer

    approvals = Approval.objects.filter(tenant=tenant).select_related("agent", "tool_call", "invocation")
    status = params.get("status", "pending")
    if status is not None:
        if status not in Approval.Status.values:
            raise RequestError("invalid_params", f"params.status must be one of {', '.join(Approval.Status.values)}.")
        approvals = approvals.filter(status=status)
    return ApprovalSerializer(approvals.order_by("-created_at")[: _limit_param(params)], many=True).data


@db_call
def _approvals_resolve(tenant, params, decided_by: str) -> dict:
    from tools.models import Approval
    from tools.serializers import ApprovalSerializer
    from tools.services import approval_resolve

    decision = params.get("decision")
    if decision not in ("allow", "deny"):
        raise RequestError("invalid_params", "params.decision must be 'allow' or 'deny'.")
    always = params.get("always", False)
    if not isinstance(always, bool):
        raise RequestError("invalid_params", "params.always must be a boolean.")
    try:
        approval = approval_resolve(
            approval_id=_uuid_param(params, "approval"), tenant=tenant, decision=decision, always=always,
            decided_by=decided_by,
        )
    except Approval.DoesNotExist:
        raise RequestError("not_found", f"No approval {params.get('approval')}.")
    return ApprovalSerializer(approval).data


_authenticate = db_call(authenticate_key)


class GatewayConsumer(AsyncWebsocketConsumer):
    async def connect(self):
        self.principal = None
        self.tails: dict[str, asyncio.Task] = {}
        self.subscriptions: set[str] = set()
        self.approvals_sent: OrderedDict[str, str] = OrderedDict()
        await self.accept()
        self.connect_deadline = asyncio.get_running_loop().call_later(CONNECT_TIMEOUT_SECONDS, self._connect_timed_out)

    def _connect_timed_out(self):
        if self.principal is None:
            asyncio.ensure_future(self._refuse(None, 4408, "timeout", f"Send connect within {CONNECT_TIMEOUT_SECONDS}s."))

    async def disconnect(self, code):
        self.connect_deadline.cancel()
        notify.redis_reset_watch.unregister(self)
        if getattr(self, "approvals_group", None):
            await self.channel_layer.group_discard(self.approvals_group, self.channel_name)
        for task in self.tails.values():
            task.cancel()
        for session_id in self.subscriptions:
            await notify.unsubscribe(session_id, self.channel_name)

    async def send_json(self, data) -> None:
        await self.send(text_data=_dumps(data))

    async def _respond(
        self, request_id, payload=None, *, error: RequestError | None = None, retry_after: int | None = None
    ) -> None:
        if error is None:
            await self.send_json({"type": "res", "id": request_id, "ok": True, "payload": payload})
            return
        body = {"code": error.code, "message": error.message}
        if retry_after is not None:
            body["retry_after"] = retry_after
        await self.send_json({"type": "res", "id": request_id, "ok": False, "error": body})

    async def _refuse(self, request_id, close_code: int, code: str, message: str) -> None:
        await self._respond(request_id, error=RequestError(code, message))
        await self.close(code=close_code, reason=message)

    # --- frames ------------------------------------------------------------------------------------

    async def receive(self, text_data=None, bytes_data=None):
        if text_data is not None and len(text_data.encode()) > MAX_FRAME_BYTES:
            await self._refuse(
                None, CLOSE_MESSAGE_TOO_BIG, "frame_too_large",
                f"Frame larger than {MAX_FRAME_BYTES} bytes; send large content (images) over the REST API.",
            )
            return
        frame, problem = self._parse(text_data, bytes_data)
        request_id = frame.get("id") if isinstance(frame, dict) else None
        try:
            await self._handle(frame, problem, request_id)
        except Exception as exc:
            if (store := outage_of(exc)) is None:
                raise
            # Nothing was done; the client may send the same request again in a few seconds.
            error = RequestError(
                "unavailable", f"{store} is unavailable right now; try again in {RETRY_AFTER_SECONDS} seconds."
            )
            if self.principal is None:
                await self._refuse(request_id, CLOSE_UNAVAILABLE, error.code, error.message)
            else:
                await self._respond(request_id, error=error, retry_after=RETRY_AFTER_SECONDS)

    async def _handle(self, frame, problem, request_id) -> None:
        if self.principal is None:
            await self._handshake(frame, problem, request_id)
            return
        if problem:
            await self._respond(request_id, error=RequestError("bad_frame", problem))
            return
        # The key is checked again on every request, not only at connect: a key revoked (or a tenant
        # suspended, or scopes narrowed) while its socket is open must stop working at once.
        try:
            self.principal = await _authenticate(self.token)
        except AuthError as exc:
            if exc.status == 429:
                await self._respond(request_id, error=exc)
            else:
                await self._refuse(request_id, CLOSE_CODES.get(exc.status, 4401), exc.code, exc.message)
            return
        try:
            self.principal.require_websocket_method(frame["method"])
            payload = await self._dispatch(frame["method"], frame.get("params") or {})
        except (RequestError, AuthError) as error:
            await self._respond(request_id, error=error)
        except DomainError as exc:
            await self._respond(request_id, error=domain_error_frame(exc))
        else:
            responded = None
            if frame["method"] == "chat.send":
                # Started now, so that its first reads of the stream overlap the response; its events wait for the
                # response, which must reach the client first: the run's id.
                responded = asyncio.Event()
                self._tail(payload["run_id"], after=responded)
            await self._respond(request_id, payload)
            if responded is not None:
                responded.set()

    @staticmethod
    def _parse(text_data, bytes_data) -> tuple[dict | None, str | None]:
        if text_data is None:
            return None, "Frames must be JSON text, not binary."
        try:
            frame = json_input.loads(text_data)
        except json_input.JSONTooDeep as exc:
            return None, str(exc)
        except ValueError as exc:
            return None, f"Frame is not valid JSON: {exc}"
        if not isinstance(frame, dict):
            return None, 'A frame must be a JSON object like {"type":"req","id":"1","method":"health","params":{}}.'
        if "\x00" in text_data or "\\u0000" in text_data:
            # Postgres stores no NUL characters; refused here as over HTTP (beamclaw_project/middleware.py).
            return frame, "The frame contains a NUL character (\\u0000), which is not allowed."
        if frame.get("type") != "req":
            return frame, 'Only {"type": "req"} frames are accepted from clients.'
        if not isinstance(frame.get("method"), str):
            return frame, "A request needs a string 'method'."
        if "params" in frame and frame["params"] is not None and not isinstance(frame["params"], dict):
            return frame, "'params' must be an object."
        return frame, None

    async def _handshake(self, frame, problem, request_id) -> None:
        if problem or frame["method"] != "connect":
            await self._refuse(request_id, 4400, "connect_required", 'The first frame must be {"type":"req","id":…,"method":"connect","params":{"token":"<api key>"}}.')
            return
        token = (frame.get("params") or {}).get("token")
        try:
            principal = await _authenticate(token if isinstance(token, str) else None)
        except AuthError as exc:
            await self._refuse(request_id, CLOSE_CODES.get(exc.status, 4401), exc.code, exc.message)
            return
        self.principal = principal
        self.token = token
        self.connect_deadline.cancel()
        from tools.approvals import tenant_approvals_group

        self.approvals_group = tenant_approvals_group(principal.tenant.pk)
        await self.channel_layer.group_add(self.approvals_group, self.channel_name)
        notify.redis_reset_watch.register(self)
        await self._respond(
            request_id,
            {
                "protocol": PROTOCOL_VERSION,
                "tenant": principal.tenant.slug,
                # What this key may call (its scopes), so a client does not offer what would be refused.
                "methods": sorted(m for m in self.METHODS if principal.allows(websocket_scope(m))),
                "scopes": sorted(principal.api_key.scopes),
                "events": EVENTS,
            },
        )

    # --- methods: one handler per protocol method, `async (self, params) -> payload` ------------------

    async def _dispatch(self, method: str, params: dict):
        handler = self.METHODS.get(method)
        if handler is None:
            raise RequestError("unknown_method", f"Unknown method '{method}'. Methods: {', '.join(sorted(self.METHODS))}.")
        return await handler(self, params)

    async def _on_connect_again(self, params):
        raise RequestError("already_connected", "This socket is already connected.")

    async def _on_health(self, params):
        from beamclaw_project.health import health_report

        return await health_report()

    async def _on_agents_list(self, params):
        return {"agents": await _agents_list(self.principal.tenant)}

    async def _on_sessions_list(self, params):
        return {"sessions": await _sessions_list(self.principal.tenant, params)}

    async def _on_sessions_create(self, params):
        return await _sessions_create(self.principal.tenant, params)

    async def _on_sessions_history(self, params):
        return await _sessions_history(self.principal.tenant, params)

    async def _on_sessions_reset(self, params):
        return await _sessions_reset(self.principal.tenant, params)

    async def _on_sessions_subscribe(self, params):
        session_id = _uuid_param(params, "session")
        active = await _active_run_id(self.principal.tenant, session_id)
        await self._subscribe(str(session_id))
        if active:
            self._tail(active)
        return {"session": str(session_id), "active_run": active}

    async def _on_sessions_compact(self, params):
        # Compacting changes what the model sees and spends tokens: a chat action, like sessions.reset.
        self.principal.require("chat", "the WebSocket method 'sessions.compact'")
        request_id = await _sessions_compact_request(self.principal.tenant, params)
        return await _compaction_outcome(params.get("session"), request_id)

    async def _on_chat_send(self, params):
        payload = await _chat_send(self.principal.tenant, params)
        await self._subscribe(payload["session"])
        return payload

    async def _on_chat_abort(self, params):
        return await _chat_abort(self.principal.tenant, params)

    async def _on_approvals_list(self, params):
        return {"approvals": await _approvals_list(self.principal.tenant, params)}

    async def _on_approvals_resolve(self, params):
        return await _approvals_resolve(self.principal.tenant, params, f"websocket:{self.principal.api_key.prefix}")

    METHODS = {
        "connect": _on_connect_again,
        "health": _on_health,
        "agents.list": _on_agents_list,
        "sessions.list": _on_sessions_list,
        "sessions.create": _on_sessions_create,
        "sessions.history": _on_sessions_history,
        "sessions.reset": _on_sessions_reset,
        "sessions.subscribe": _on_sessions_subscribe,
        "sessions.compact": _on_sessions_compact,
        "chat.send": _on_chat_send,
        "chat.abort": _on_chat_abort,
        "approvals.list": _on_approvals_list,
        "approvals.resolve": _on_approvals_resolve,
    }

    # --- run events --------------------------------------------------------------------------------

    async def resubscribe(self) -> None:
        """Redis lost its data, and with it this socket's subscriptions (notify.RedisResetWatch)."""
        await self.channel_layer.group_add(self.approvals_group, self.channel_name)
        for session_id in self.subscriptions:
            await notify.subscribe(session_id, self.channel_name)

    async def _subscribe(self, session_id: str) -> None:
        if session_id not in self.subscriptions:
            self.subscriptions.add(session_id)
            await notify.subscribe(session_id, self.channel_name)

    def _tail(self, run_id: str, *, after: asyncio.Event | None = None) -> None:
        """Forward the run's events to the client; with `after`, none before it is set."""
        if run_id not in self.tails:
            self.tails[run_id] = asyncio.ensure_future(self._forward_events(run_id, after))

    async def _forward_events(self, run_id: str, after: asyncio.Event | None = None) -> None:
        try:
            async for event in follow_run(run_id):
                if event is None or not self._first_approval_copy(event.event, event.payload):
                    continue
                if after is not None:
                    await after.wait()
                    after = None
                await self.send_json(
                    {"type": "event", "event": event.event, "payload": {**event.payload, "run_id": run_id}, "seq": event.seq}
                )
        except TimeoutError:
            pass

    async def approval_event(self, message):
        """Channel-layer notification: an approval of this tenant was requested or resolved. Only keys that
        may read the tenant's approvals (`approvals.list` needs `read`) get them: they carry the call's
        input, env values included. A chat-only socket still sees its own runs' approvals on their streams."""
        if not self.principal.allows("read"):
            return
        if self._first_approval_copy(message["event"], message["payload"]):
            await self.send_json({"type": "event", "event": message["event"], "payload": message["payload"], "seq": None})

    def _first_approval_copy(self, event: str, payload: dict) -> bool:
        """Whether to deliver this event: False for an approval event already delivered, or a `requested`
        after its `resolved`. Decided and recorded with no await in between, so the two copies cannot race."""
        if event not in ("approval.requested", "approval.resolved"):
            return True
        approval_id = payload.get("approval_id")
        sent = self.approvals_sent.get(approval_id)
        if sent == "approval.resolved" or sent == event:
            return False
        self.approvals_sent[approval_id] = event
        self.approvals_sent.move_to_end(approval_id)
        if len(self.approvals_sent) > APPROVALS_REMEMBERED:
            self.approvals_sent.popitem(last=False)
        return True

    async def run_started(self, message):
        """Channel-layer notification: a run started in a session this socket follows."""
        self._tail(message["run_id"])
