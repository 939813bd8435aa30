"""OpenAI Responses API edge: POST /v1/responses (stream true and false), GET /v1/responses/{id}.

The same engine as /v1/chat/completions (sessions/openai_api.py), spoken in the Responses dialect, which
new OpenAI clients and the OpenAI Agents SDK default to. What a request turns into (docs/responses.md):

How a request is read (ids, conversations, refusals): sessions/responses.py. Here:

- The output is one message item with the run's result text, then one `function_call` item per call of
  the client's own tools (`tools`). The agent's own tools run on the server, unseen, as on Chat
  Completions. Item ids are derived from the run and the calls, so a stream, the final object and a later
  GET name the same items.
"""

import json
import uuid
from dataclasses import dataclass
from functools import partial

from django.http import JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

from beamclaw_project.asyncdb import db_call
from beamclaw_project.errors import DomainError
from beamclaw_project.infra.draining import drain_expired
from sessions import events
from sessions.models import Run
from sessions.openai_api import (
    auth_error_response,
    domain_error_response,
    json_body,
    openai_error,
    provider_error_status,
    require_GET,
    require_POST,
    restarting_message,
    restarting_response,
    run_goes_on,
    run_start_or_error,
)
from sessions.responses import (
    ECHO_PARAM,
    function_call_item_id,
    message_item_id,
    parse_responses_request,
    response_id,
    responses_start,
    run_id_of,
)
from sessions.run_stream import follow_run
from sessions.runs import terminal_event_from_db
from tenants.auth import AuthError, authenticate_key, bearer_token

# --- starting --------------------------------------------------------------------------------------------


def _parse(request):
    """(ResponsesRequest, None) or (None, error response)."""
    body, error = json_body(request)
    if error is not None:
        return None, error
    try:
        return parse_responses_request(
            body,
            session_header=request.headers.get("X-Session-Key"),
            queue_mode_header=request.headers.get("X-Queue-Mode"),
        ), None
    except DomainError as exc:
        return None, domain_error_response(exc)


@csrf_exempt
@require_POST
async def create_response(request):
    parsed, body_error = _parse(request)
    outcome = await run_start_or_error(
        request, model=parsed and parsed.chat.model, start=parsed and partial(responses_start, parsed=parsed),
        body_error=body_error,
    )
    if isinstance(outcome, JsonResponse):
        return outcome
    run = outcome.run
    shell = _Shell(run_id=run.pk, created_at=int(run.created_at.timestamp()), model=parsed.chat.model,
                   params=run.params)
    if parsed.chat.stream:
        response = StreamingHttpResponse(_stream_events(shell), content_type="text/event-stream")
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"
    else:
        response = await _complete(request, shell)
    response["X-Run-Id"] = str(run.pk)
    response["X-Session-Id"] = str(run.session_id)
    return response


# --- the Response object --------------------------------------------------------------------------------


@dataclass
class _Shell:
    """What every form of one response shares: its run, when it was made, its agent and its request."""

    run_id: uuid.UUID
    created_at: int
    model: str
    params: dict

    @property
    def message_id(self) -> str:
        return message_item_id(self.run_id)


# The run's terminal stop reason as the Response's status and incomplete_details.
_INCOMPLETE_REASONS = {"max_tokens": "max_output_tokens"}


def _response_object(shell: _Shell, *, status: str, output: list[dict], usage: dict | None = None,
                     error: dict | None = None, incomplete_reason: str | None = None) -> dict:
    params, echo = shell.params, shell.params.get(ECHO_PARAM, {})
    strict = set(echo.get("strict_tools", ()))
    tools = [
        {"type": "function", "name": tool["name"], "description": tool.get("description"),
         "parameters": tool["input_schema"], "strict": tool["name"] in strict}
        for tool in params.get("client_tools", ())
    ]
    output_text = "".join(
        part["text"] for item in output if item["type"] == "message" for part in item["content"]
    )
    return {
        "id": response_id(shell.run_id),
        "object": "response",
        "created_at": shell.created_at,
        "status": status,
        "model": shell.model,
        "output": output,
        "output_text": output_text,
        "usage": _usage(usage) if usage is not None else None,
        "error": error,
        "incomplete_details": {"reason": incomplete_reason} if incomplete_reason else None,
        "instructions": echo.get("instructions"),
        "metadata": echo.get("metadata", {}),
        "previous_response_id": echo.get("previous_response_id"),
        "tools": tools,
        "tool_choice": echo.get("tool_choice", "auto"),
        "parallel_tool_calls": echo.get("parallel_tool_calls", True),
        "temperature": params.get("temperature"),
        "top_p": params.get("top_p"),
        "max_output_tokens": params.get("max_tokens"),
        "reasoning": {"effort": params["effort"], "summary": None} if params.get("effort") else None,
        "text": {"format": params.get("response_format") or {"type": "text"}},
        "truncation": echo.get("truncation", "disabled"),
        "store": echo.get("store", True),
        "background": False,
        "user": echo.get("user"),
        "safety_identifier": echo.get("safety_identifier"),
        "prompt_cache_key": echo.get("prompt_cache_key"),
    }


def _usage(usage: dict) -> dict:
    given, made = usage.get("input_tokens", 0), usage.get("output_tokens", 0)
    return {
        "input_tokens": given,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": made,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": given + made,
    }


def _message_item(shell: _Shell, text: str, *, status: str = "completed") -> dict:
    return {
        "type": "message", "id": shell.message_id, "status": status, "role": "assistant",
        "content": [] if status == "in_progress" else [_text_part(text)],
    }


def _text_part(text: str) -> dict:
    return {"type": "output_text", "text": text, "annotations": []}


def _function_call_item(call: dict, *, status: str = "completed") -> dict:
    return {
        "type": "function_call", "id": function_call_item_id(call["id"]), "call_id": call["id"], "name": call["name"],
        "arguments": "" if status == "in_progress" else _arguments(call), "status": status,
    }


def _arguments(call: dict) -> str:
    return json.dumps(call.get("input") or {}, separators=(",", ":"))


def _output(shell: _Shell, text: str, calls: list[dict], *, status: str = "completed") -> list[dict]:
    """The message with the run's result text (also when empty, unless the run only called tools), then the
    client's calls."""
    items = [_message_item(shell, text, status=status)] if text or not calls else []
    return items + [_function_call_item(call) for call in calls]


def _completed(shell: _Shell, payload: dict) -> dict:
    """The Response of a run that succeeded, from its run.completed payload."""
    incomplete_reason = _INCOMPLETE_REASONS.get(payload.get("stop_reason"))
    status = "incomplete" if incomplete_reason else "completed"
    text, calls = payload.get("text") or "", payload.get("tool_calls") or []
    return _response_object(shell, status=status, output=_output(shell, text, calls, status=status),
                            usage=payload.get("usage", {}), incomplete_reason=incomplete_reason)


def _ended_badly(shell: _Shell, event: events.RunEvent) -> dict:
    """The Response of a failed or aborted run."""
    payload = event.payload
    if event.event == events.RUN_ABORTED:
        status, code = "cancelled", "aborted"
        message = f"The run was aborted: {payload.get('error') or 'by request'}"
    else:
        status, code = "failed", "rate_limit_exceeded" if payload.get("code") == "rate_limited" else "server_error"
        message = payload.get("error") or "The run failed."
    error = {"code": code, "message": message, "type": payload.get("code") or None}
    return _response_object(shell, status=status, output=[], usage=payload.get("usage", {}), error=error)


# --- non-streaming -----------------------------------------------------------------------------------


async def _complete(request, shell: _Shell):
    """Wait for the run's end. A failed run is an HTTP error, as on Chat Completions: a client that does not
    look at `status` must not take an empty output for an answer."""
    run_id = shell.run_id
    try:
        async for event in follow_run(run_id, ending_only=True):
            if drain_expired():
                return restarting_response(request, run_id)
            if event is None or event.event not in events.TERMINAL_EVENTS:
                continue
            payload = event.payload
            if event.event == events.RUN_FAILED:
                return openai_error(
                    provider_error_status(payload.get("code", "")), payload.get("error") or "The run failed.",
                    type="upstream_error", code=payload.get("code") or "run_failed",
                )
            if event.event == events.RUN_ABORTED:
                return openai_error(409, f"The run was aborted: {payload.get('error')}", type="run_aborted", code="aborted")
            return JsonResponse(_completed(shell, payload))
    except TimeoutError as exc:
        return run_goes_on(openai_error(504, f"{exc}; the run continues: GET /v1/responses/{response_id(run_id)}.",
                                        type="timeout", code="timeout"), request)


# --- streaming -----------------------------------------------------------------------------------------


class _EventWriter:
    """The Responses stream's events, numbered by `sequence_number` from 0, with the item of the message
    that every text delta of the run goes to (opened at the first one)."""

    def __init__(self, shell: _Shell):
        self.shell = shell
        self.sequence = 0
        self.message_open = False
        self.streamed = ""
        self.output_count = 0

    def event(self, kind: str, **fields) -> bytes:
        data = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return f"event: {kind}\ndata: ".encode() + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"

    def text_delta(self, text: str) -> list[bytes]:
        self.streamed += text
        chunks = [] if self.message_open else self._message_open()
        chunks.append(self.event("response.output_text.delta", item_id=self.shell.message_id, output_index=0,
                                 content_index=0, delta=text, logprobs=[]))
        return chunks

    def _message_open(self) -> list[bytes]:
        self.message_open = True
        self.output_count = 1
        message_id = self.shell.message_id
        return [
            self.event("response.output_item.added", output_index=0,
                       item=_message_item(self.shell, "", status="in_progress")),
            self.event("response.content_part.added", item_id=message_id, output_index=0, content_index=0,
                       part=_text_part("")),
        ]

    def finish(self, response: dict) -> list[bytes]:
        """The closing events of the output items of the final `response`, then its terminal event. A message
        opened by text deltas stays in the output even when the result has no text (the run's last step only
        called client tools) or there is no result (the run failed): every item added must be done."""
        if self.message_open and not any(item["type"] == "message" for item in response["output"]):
            status = "completed" if response["status"] == "completed" else "incomplete"
            response["output"].insert(0, _message_item(self.shell, self.streamed if status == "incomplete" else "",
                                                       status=status))
            response["output_text"] = response["output"][0]["content"][0]["text"]
        chunks: list[bytes] = []
        for item in response["output"]:
            if item["type"] == "message":
                chunks += self._message_close(item)
            else:
                chunks += self._function_call(item)
        kind = {"completed": "response.completed", "incomplete": "response.incomplete"}.get(
            response["status"], "response.failed")
        chunks.append(self.event(kind, response=response))
        return chunks

    def _message_close(self, item: dict) -> list[bytes]:
        # A reply whose text never streamed (say, only tool calls before an empty answer) still opens its item.
        chunks = [] if self.message_open else self._message_open()
        text, message_id = item["content"][0]["text"], item["id"]
        return chunks + [
            self.event("response.output_text.done", item_id=message_id, output_index=0, content_index=0, text=text,
                       logprobs=[]),
            self.event("response.content_part.done", item_id=message_id, output_index=0, content_index=0,
                       part=_text_part(text)),
            self.event("response.output_item.done", output_index=0, item=item),
        ]

    def _function_call(self, item: dict) -> list[bytes]:
        index = self.output_count
        self.output_count += 1
        return [
            self.event("response.output_item.added", output_index=index,
                       item={**item, "arguments": "", "status": "in_progress"}),
            self.event("response.function_call_arguments.delta", item_id=item["id"], output_index=index,
                       delta=item["arguments"]),
            self.event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                       name=item["name"], arguments=item["arguments"]),
            self.event("response.output_item.done", output_index=index, item=item),
        ]

    def error(self, code: str, message: str) -> bytes:
        return self.event("error", code=code, message=message, param=None)


async def _stream_events(shell: _Shell):
    writer = _EventWriter(shell)
    started = _response_object(shell, status="in_progress", output=[])
    yield writer.event("response.created", response=started)
    yield writer.event("response.in_progress", response=started)
    try:
        async for event in follow_run(shell.run_id):
            if drain_expired():
                # This web process is shutting down and the run outlived the drain (daphne_hardening.py).
                yield writer.error("server_restarting", restarting_message(shell.run_id))
                return
            if event is None:
                yield b": keep-alive\n\n"
            elif event.event == events.TEXT_DELTA:
                for chunk in writer.text_delta(event.payload["text"]):
                    yield chunk
            elif event.event == events.STREAM_INTERRUPTED:
                yield writer.error("stream_lost", event.payload["error"])
                return
            elif event.event in events.TERMINAL_EVENTS:
                if event.event == events.RUN_COMPLETED:
                    final = _completed(shell, event.payload)
                else:
                    final = _ended_badly(shell, event)
                for chunk in writer.finish(final):
                    yield chunk
                return
    except TimeoutError as exc:
        yield writer.error("timeout", f"{exc}; the run continues: GET /v1/responses/{response_id(shell.run_id)}.")


# --- retrieving ----------------------------------------------------------------------------------------


# A run that has not ended, as a Response's status.
_LIVE_STATUSES = {Run.Status.QUEUED: "queued", Run.Status.RUNNING: "in_progress",
                  Run.Status.AWAITING_APPROVAL: "in_progress"}


@db_call
def _stored_response(authorization: str | None, value: str):
    """The Response of run `value` of the key's tenant, rebuilt from Postgres; None if there is none.
    Raises AuthError."""
    principal = authenticate_key(bearer_token(authorization), scope="chat", what="the OpenAI-compatible API")
    run_id = run_id_of(value)
    run = (Run.objects.filter(tenant=principal.tenant, pk=run_id).select_related("session__agent").first()
           if run_id else None)
    if run is None:
        return None
    shell = _Shell(run_id=run.pk, created_at=int(run.created_at.timestamp()), model=run.session.agent.slug,
                   params=run.params)
    terminal = terminal_event_from_db(run)
    if terminal is None:
        return _response_object(shell, status=_LIVE_STATUSES.get(run.status, "in_progress"), output=[])
    if terminal.event != events.RUN_COMPLETED:
        return _ended_badly(shell, terminal)
    # The stop reason is not stored: a reply cut at max_output_tokens reads back as completed.
    return _completed(shell, terminal.payload)


@require_GET
async def retrieve_response(request, response_id_value: str):
    try:
        found = await _stored_response(request.headers.get("Authorization"), response_id_value)
    except AuthError as exc:
        return auth_error_response(exc)
    if found is None:
        return openai_error(404, f"No response with id {response_id_value[:80]!r} was found.", code="not_found")
    return JsonResponse(found)
