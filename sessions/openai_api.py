"""OpenAI-compatible edge: GET /v1/models, POST /v1/chat/completions (stream true and false).

What a request may say and how each field is honoured: docs/openai.md. The response's X-Session-History
header says where the conversation came from (sessions/chat.py), X-Session-Key which session holds it.

Plain async Django views rather than DRF: the streaming path must not tie up a thread per client, and
the error shape is OpenAI's, not DRF's. The services' refusals (beamclaw_project/errors.py) take that shape
in one place, `domain_error_response`.
"""

import json
from functools import partial, wraps

from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

from beamclaw_project import json_input
from beamclaw_project.asyncdb import db_call
from beamclaw_project.errors import DomainError, InvalidInput, LimitExceeded
from beamclaw_project.infra.draining import drain_expired
from sessions import events
from sessions.chat import chat_start, parse_chat_request
from sessions.client_tools import openai_tool_calls
from sessions.idempotency import HEADER as IDEMPOTENCY_HEADER
from sessions.idempotency import IdempotencyConflict, IdempotencyKeyInvalid, idempotency_key_from
from sessions.run_stream import follow_run
from sessions.runs import SessionClosed
from tenants.auth import AuthError, authenticate_key, authenticate_key_for_agent, bearer_token
from tenants.selectors import agent_by_slug, agents_of

FINISH_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls"}


# OpenAI's error `type` by status; any other status is an `invalid_request_error`.
_ERROR_TYPES = {403: "permission_error", 429: "rate_limit_error"}
# The codes OpenAI clients see for these conflicts (REST and the WebSocket say `conflict` for both).
_CONFLICT_CODES = ((IdempotencyConflict, "idempotency_key_reused"), (SessionClosed, "session_closed"))


def openai_error(status: int, message: str, *, type: str = "invalid_request_error", code=None, param=None) -> JsonResponse:
    response = JsonResponse({"error": {"message": message, "type": type, "param": param, "code": code}}, status=status)
    if status == 409:
        # The official `openai` client sends a request answered 409 again by default (for OpenAI, a lock that
        # timed out). Here a conflict is a state the same request meets again (a session closed or another
        # agent's, an Idempotency-Key used with another body), and an aborted run's request sent again would run
        # again, undoing the abort. The client obeys this header.
        response["X-Should-Retry"] = "false"
    return response


def run_goes_on(response: JsonResponse, request) -> JsonResponse:
    """`response`, a 503 (the server restarting) or 504 (no progress in time) for a run that goes on. The
    official `openai` client sends a 503 or 504 again by default: the same request without an
    Idempotency-Key, which would find this run, starts a second one (a second reply, billed again, and the
    user's message twice in a session). The client obeys X-Should-Retry."""
    if request.headers.get(IDEMPOTENCY_HEADER) is None:
        response["X-Should-Retry"] = "false"
    return response


def domain_error_response(exc: DomainError) -> JsonResponse:
    """A service's refusal in OpenAI's shape: bad input is `invalid_request` naming the parameter, a used-up
    budget `insufficient_quota` with Retry-After, anything else its own status and code."""
    if isinstance(exc, LimitExceeded):
        response = openai_error(exc.status, exc.message, type="insufficient_quota", code=exc.code)
        response["Retry-After"] = str(exc.retry_after)
        return response
    if isinstance(exc, InvalidInput):
        code = "invalid_request"
    else:
        code = next((openai_code for cls, openai_code in _CONFLICT_CODES if isinstance(exc, cls)), exc.code)
    error_type = _ERROR_TYPES.get(exc.status, "invalid_request_error")
    return openai_error(exc.status, exc.message, type=error_type, code=code, param=exc.field)


def _only(method: str):
    """Django's require_GET/require_POST answer 405 with an empty body; OpenAI clients expect their error
    shape, and HTTP wants the Allow header."""

    def decorator(view):
        @wraps(view)
        async def wrapper(request, *args, **kwargs):
            if request.method != method:
                response = openai_error(
                    405, f"Method {request.method} is not allowed on {request.path}; use {method}.",
                    code="method_not_allowed",
                )
                response["Allow"] = method
                return response
            return await view(request, *args, **kwargs)

        return wrapper

    return decorator


require_GET = _only("GET")
require_POST = _only("POST")


def provider_error_status(code: str) -> int:
    # Overload and rate limits are worth retrying for the client; anything else upstream is a bad gateway.
    return 503 if code in ("overloaded", "rate_limited") else 502


@db_call
def _authenticate(request: HttpRequest):
    return authenticate_key(bearer_token(request.headers.get("Authorization")), scope="chat", what="the OpenAI-compatible API")


@db_call
def _list_agents(tenant) -> list[dict]:
    return list(agents_of(tenant=tenant).values("slug", "created_at"))


_find_agent = db_call(agent_by_slug)


def auth_error_response(exc: AuthError) -> JsonResponse:
    error_type = _ERROR_TYPES.get(exc.status, "invalid_request_error")
    response = openai_error(exc.status, exc.message, type=error_type, code=exc.code)
    if exc.retry_after:
        response["Retry-After"] = str(exc.retry_after)
    return response


async def _auth_or_error(request):
    try:
        return await _authenticate(request), None
    except AuthError as exc:
        return None, auth_error_response(exc)


def _model_object(agent: dict, owner: str) -> dict:
    return {"id": agent["slug"], "object": "model", "created": int(agent["created_at"].timestamp()), "owned_by": owner}


@require_GET
async def list_models(request):
    principal, error = await _auth_or_error(request)
    if error:
        return error
    agents = await _list_agents(principal.tenant)
    return JsonResponse({"object": "list", "data": [_model_object(a, principal.tenant.slug) for a in agents]})


@require_GET
async def retrieve_model(request, model_id: str):
    principal, error = await _auth_or_error(request)
    if error:
        return error
    agent = await _find_agent(tenant=principal.tenant, slug=model_id)
    if agent is None:
        return openai_error(404, f"The model '{model_id}' does not exist.", code="model_not_found", param="model")
    return JsonResponse(_model_object({"slug": agent.slug, "created_at": agent.created_at}, principal.tenant.slug))


def _sse(data) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


def json_body(request):
    """(the request's JSON body, None) or (None, the error response)."""
    try:
        return json_input.loads(request.body), None
    except RequestDataTooBig:
        # (RequestBodyLimitMiddleware answers first; this is for a limit lowered below it.)
        return None, openai_error(413, "The request body is too large.", code="request_too_large")
    except json_input.JSONTooDeep as exc:
        return None, openai_error(400, f"The request body is refused: {exc}", code="json_too_deep")
    except (ValueError, UnicodeDecodeError) as exc:
        return None, openai_error(400, f"The request body is not valid JSON: {exc}", code="invalid_json")


def _parse_chat(request):
    """(ChatRequest, None) or (None, error response)."""
    body, error = json_body(request)
    if error is not None:
        return None, error
    try:
        return parse_chat_request(
            body,
            session_header=request.headers.get("X-Session-Key"),
            queue_mode_header=request.headers.get("X-Queue-Mode"),
            session_mode_header=request.headers.get("X-Session-Mode"),
        ), None
    except DomainError as exc:
        return None, domain_error_response(exc)


@db_call
def _authenticate_and_start(authorization: str | None, model: str | None, start, idempotency_key: str | None):
    """Everything a request needs from the database in one thread hop: the key, the agent, the run
    (`start(tenant=, agent=, idempotency_key=)`, None when the request is refused anyway). Returns what
    `start` returns, or the error response; raises AuthError."""
    token = bearer_token(authorization)
    if start is None:
        authenticate_key(token, scope="chat", what="the OpenAI-compatible API")
        return None
    principal, agent = authenticate_key_for_agent(token, model, scope="chat", what="the OpenAI-compatible API")
    if agent is None:
        return openai_error(
            404, f"The model '{model}' does not exist: use the slug of one of your agents (GET /v1/models).",
            code="model_not_found", param="model",
        )
    try:
        return start(tenant=principal.tenant, agent=agent, idempotency_key=idempotency_key)
    except DomainError as exc:
        return domain_error_response(exc)


async def run_start_or_error(request, *, model: str | None, start, body_error):
    """Start a parsed request's run (chat_start's ChatStarted), or the error response to answer instead.
    The body is parsed first, but refusals come in the order a client fixes things: credentials, then the
    body (and Idempotency-Key), then what starting the run says."""
    idempotency_key = None
    try:
        idempotency_key = idempotency_key_from(request.headers)
    except IdempotencyKeyInvalid as exc:
        body_error = body_error or domain_error_response(exc)
    try:
        outcome = await _authenticate_and_start(
            request.headers.get("Authorization"), model, None if body_error else start, idempotency_key
        )
    except AuthError as exc:
        return auth_error_response(exc)
    return body_error or outcome


@csrf_exempt
@require_POST
async def chat_completions(request):
    chat, body_error = _parse_chat(request)
    outcome = await run_start_or_error(
        request, model=chat and chat.model, start=chat and partial(chat_start, request=chat), body_error=body_error,
    )
    if isinstance(outcome, JsonResponse):
        return outcome
    run, completion_id, created = outcome.run, outcome.completion_id, outcome.created
    if chat.stream:
        # In JSON mode the reply is checked (and maybe repaired) before the client may see it: it comes
        # whole, from the terminal event, instead of as the model writes it.
        response = StreamingHttpResponse(
            _stream_chunks(run.pk, completion_id, created, chat.model, chat.include_usage,
                           hold_text="response_format" in chat.params),
            content_type="text/event-stream",
        )
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"
    else:
        response = await _complete(request, run.pk, completion_id, created, chat.model)
    response["X-Run-Id"] = str(run.pk)
    response["X-Session-Id"] = str(run.session_id)
    response["X-Session-Key"] = outcome.session_key
    response["X-Session-History"] = outcome.history
    return response


def _reply_message(payload: dict) -> dict:
    """The assistant message of a finished run, with the calls it hands to the client as `tool_calls`."""
    calls = payload.get("tool_calls")
    if not calls:
        return {"role": "assistant", "content": payload.get("text", "")}
    return {"role": "assistant", "content": payload.get("text") or None, "tool_calls": openai_tool_calls(calls)}


async def _complete(request, run_id, completion_id: str, created: int, model: str):
    try:
        async for event in follow_run(run_id, ending_only=True):
            if drain_expired():
                return restarting_response(request, run_id)
            if event is None or event.event not in events.TERMINAL_EVENTS:
                continue
            payload = event.payload
            if event.event == events.RUN_FAILED:
                return openai_error(
                    provider_error_status(payload.get("code", "")),
                    payload.get("error") or "The run failed.",
                    type="upstream_error", code=payload.get("code") or "run_failed",
                )
            if event.event == events.RUN_ABORTED:
                return openai_error(409, f"The run was aborted: {payload.get('error')}", type="run_aborted", code="aborted")
            return JsonResponse(
                {
                    "id": completion_id,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": _reply_message(payload),
                            "finish_reason": FINISH_REASONS.get(payload.get("stop_reason"), "stop"),
                        }
                    ],
                    "usage": _usage(payload.get("usage", {})),
                }
            )
    except TimeoutError as exc:
        return run_goes_on(
            openai_error(504, f"{exc}; the run continues: GET /api/runs/{run_id}/.", type="timeout", code="timeout"), request
        )



def _usage(usage: dict) -> dict:
    prompt, completion = usage.get("input_tokens", 0), usage.get("output_tokens", 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _tool_call_deltas(calls: list[dict]) -> list[dict]:
    """The client's tool calls as OpenAI streams them: per call, its index, id and name first, then its
    arguments (in one fragment: the run hands calls out whole, once the step's own tools have run)."""
    deltas = []
    for index, call in enumerate(openai_tool_calls(calls)):
        function = call["function"]
        deltas.append({"tool_calls": [{"index": index, "id": call["id"], "type": "function",
                                       "function": {"name": function["name"], "arguments": ""}}]})
        deltas.append({"tool_calls": [{"index": index, "function": {"arguments": function["arguments"]}}]})
    return deltas


async def _stream_chunks(run_id, completion_id: str, created: int, model: str, include_usage: bool,
                         hold_text: bool = False):
    def chunk(delta: dict, finish_reason=None) -> dict:
        return {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }

    # A text delta's chunk is the same bytes but for its text: written out once, with only the text encoded
    # per delta (the whole chunk's json.dumps was a twentieth of the web process's CPU per delta).
    delta_head, _, delta_tail = _sse(chunk({"content": ""})).rpartition(b'"content":""')
    delta_head += b'"content":'

    yield _sse(chunk({"role": "assistant", "content": ""}))
    # What the run's end brings (its last chunks, or an error) goes out with [DONE] in one write: each write
    # is a trip through Django, Daphne and Twisted, and the client reads on to [DONE] anyway.
    ending: list[bytes] = []
    try:
        async for event in follow_run(run_id):
            if drain_expired():
                # This web process is shutting down and the run outlived the drain (daphne_hardening.py).
                message = restarting_message(run_id)
                ending.append(_sse({"error": {"message": message, "type": "server_restarting", "code": "server_restarting"}}))
                break
            if event is None:
                yield b": keep-alive\n\n"
            elif event.event == events.TEXT_DELTA:
                if not hold_text:
                    yield delta_head + json.dumps(event.payload["text"]).encode() + delta_tail
            elif event.event == events.RUN_COMPLETED:
                payload = event.payload
                if hold_text and payload.get("text"):
                    ending.append(_sse(chunk({"content": payload["text"]})))
                ending.extend(_sse(chunk(delta)) for delta in _tool_call_deltas(payload.get("tool_calls") or []))
                ending.append(_sse(chunk({}, FINISH_REASONS.get(payload.get("stop_reason"), "stop"))))
                if include_usage:
                    ending.append(_sse({**chunk({}), "choices": [], "usage": _usage(payload.get("usage", {}))}))
            elif event.event == events.STREAM_INTERRUPTED:
                ending.append(_sse({"error": {"message": event.payload["error"], "type": "stream_interrupted", "code": "stream_lost"}}))
                break
            elif event.event in (events.RUN_FAILED, events.RUN_ABORTED):
                payload = event.payload
                code = payload.get("code") or ("aborted" if event.event == events.RUN_ABORTED else "run_failed")
                ending.append(_sse({"error": {"message": payload.get("error") or "The run failed.", "type": "upstream_error", "code": code}}))
    except TimeoutError as exc:
        ending.append(_sse({"error": {"message": str(exc), "type": "timeout", "code": "timeout"}}))
    yield b"".join(ending) + b"data: [DONE]\n\n"


def restarting_response(request, run_id) -> JsonResponse:
    """A plain (non-streaming) request's 503 when this web process's drain ends before its run does. (The
    caller's view adds X-Run-Id.)"""
    response = openai_error(503, restarting_message(run_id), type="server_restarting", code="server_restarting")
    response["Retry-After"] = "1"
    return run_goes_on(response, request)


def restarting_message(run_id) -> str:
    return (
        f"The server is restarting; the run goes on. Its result: GET /api/runs/{run_id}/ (or /api/runs/{run_id}/events/ "
        "to follow it)."
    )
