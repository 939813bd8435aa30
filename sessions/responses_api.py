"""OpenAI Responses API edge: POST /v1/responses (stream true and false), GET /v1/responses/{id}.

The same engine as /v1/chat/completions (sessions/openai_api.py), spoken in the Responses dialect, which
new OpenAI clients and the OpenAI Agents SDK default to. What a request turns into (docs/responses.md):

- A response is a run: its id is `resp_<run id as hex>`, so GET finds it in Postgres without a table of
  its own, and `previous_response_id` names the run whose session a request continues.
- A conversation is a persistent session of its own, `agent:<agent>:responses-<name>`: any later request
  may continue it, so it is not an ephemeral session (those close when their run ends). A request
  without `previous_response_id` starts one from its `input` (earlier turns included); a request with it
  adds only new input (user messages, `function_call_output` items) to the stored conversation, and only
  to its latest response: a branch from an earlier one would silently carry on from the latest.
- The output is one message item with the run's result text, then one `function_call` item per call of
  the client's own tools (`tools`). The agent's own tools run on the server, unseen, as on Chat
  Completions. Item ids are derived from the run and the calls, so a stream, the final object and a later
  GET name the same items.
- Every parameter is taken, refused with a 400 naming it, or accepted because it changes nothing here
  (identifiers, `store`: everything is stored); an unknown one is refused rather than ignored.
"""

import hashlib
import json
import secrets
import uuid
from dataclasses import dataclass

from django.core.exceptions import RequestDataTooBig
from django.http import JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

from beamclaw_project import json_input
from beamclaw_project.asyncdb import db_call
from beamclaw_project.errors import DomainError, InvalidInput, NotFound
from beamclaw_project.infra.draining import drain_expired
from sessions import events
from sessions.chat import REASONING_EFFORTS, ChatRequest, chat_start
from sessions.client_tools import client_tools_parse, tool_choice_parse, tool_result_block, tool_use_block
from sessions.content import content_parse
from sessions.idempotency import IdempotencyKeyInvalid, idempotency_key_from
from sessions.models import AgentSession, IdempotencyKey, Run
from sessions.openai_api import (
    auth_error_response,
    domain_error_response,
    openai_error,
    provider_error_status,
    require_GET,
    require_POST,
    restarting_message,
)
from sessions.run_stream import follow_run
from sessions.runs import response_format_parse, terminal_event_from_db
from sessions.services import SessionKeyInvalid, session_key_normalize
from tenants.auth import AuthError, authenticate_key, bearer_token
from tenants.selectors import agent_by_slug

ENDPOINT = "responses"  # the idempotency keys' endpoint
RESPONSE_PREFIX = "resp_"
# Run param with what a Response object repeats back from its request (instructions, metadata, ...), so GET
# answers with what the POST did. The engine ignores it.
ECHO_PARAM = "responses_api"
ITEM_ROLES = ("user", "assistant", "system", "developer")
METADATA_MAX_KEYS, METADATA_KEY_CHARS, METADATA_VALUE_CHARS = 16, 64, 512

# Parameters that are accepted and change nothing here (identifiers for the caller's own bookkeeping).
_IDENTIFIERS = ("user", "safety_identifier", "prompt_cache_key")
# Parameters whose neutral value (or absence) is accepted; anything else is refused by name.
_NEUTRAL = {
    "background": (False,),
    "conversation": (),
    "prompt": (),
    "max_tool_calls": (),
    "top_logprobs": (0,),
    "include": ([],),
    "service_tier": ("auto", "default"),
    "prompt_cache_retention": ("in_memory", "24h"),
}
_REFUSAL_HINTS = {
    "background": "responses run while the request is open; follow a long one with stream: true",
    "conversation": "continue a conversation with previous_response_id",
    "prompt": "stored prompts are not supported; send instructions and input",
    "max_tool_calls": "the agent's step cap limits its tool calls",
    "top_logprobs": "log probabilities are not available",
    "include": "no extra output data is available",
    "service_tier": "there is one service tier",
}
_KNOWN = {
    "model", "input", "instructions", "stream", "stream_options", "previous_response_id", "tools", "tool_choice",
    "parallel_tool_calls", "max_output_tokens", "temperature", "top_p", "text", "reasoning", "metadata", "store",
    "truncation", *_IDENTIFIERS, *_NEUTRAL,
}


class ResponsesRequestError(InvalidInput):
    """`field` is the request parameter at fault, as OpenAI's `param`."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message, field=param)


# --- ids ---------------------------------------------------------------------------------------------


def response_id(run_id) -> str:
    return RESPONSE_PREFIX + uuid.UUID(str(run_id)).hex


def run_id_of(value: str) -> uuid.UUID | None:
    """The run a response id names; None for anything that is not one of ours."""
    if not isinstance(value, str) or not value.startswith(RESPONSE_PREFIX):
        return None
    try:
        return uuid.UUID(hex=value[len(RESPONSE_PREFIX):])
    except ValueError:
        return None


def _message_id(run_id) -> str:
    return "msg_" + uuid.UUID(str(run_id)).hex


def _function_call_id(call_id: str) -> str:
    return "fc_" + call_id


# --- the request -------------------------------------------------------------------------------------


@dataclass
class ResponsesRequest:
    chat: ChatRequest
    previous_run_id: uuid.UUID | None = None


def parse_responses_request(body, *, session_header: str | None, queue_mode_header: str | None) -> ResponsesRequest:
    """The request as a ChatRequest for chat_start, or ResponsesRequestError (or another InvalidInput)
    naming the parameter at fault."""
    if not isinstance(body, dict):
        raise ResponsesRequestError("The request body must be a JSON object.")
    unknown = sorted(str(name) for name in body if name not in _KNOWN)
    if unknown:
        raise ResponsesRequestError(
            f"{unknown[0]} is not a parameter this gateway knows; leave it out (docs/responses.md lists the "
            "supported ones).", unknown[0],
        )
    _refuse_non_neutral(body)
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise ResponsesRequestError("model is required and must be the slug of one of your agents (see GET /v1/models).", "model")
    model = model.strip()
    stream = _boolean(body, "stream", default=False)
    if body.get("stream_options") is not None and not isinstance(body["stream_options"], dict):
        raise ResponsesRequestError("stream_options must be an object.", "stream_options")
    _boolean(body, "store", default=True)  # everything is stored: a response can always be retrieved

    previous = body.get("previous_response_id")
    previous_run_id = None
    if previous is not None:
        if not isinstance(previous, str):
            raise ResponsesRequestError("previous_response_id must be a string (resp_...).", "previous_response_id")
        previous_run_id = run_id_of(previous)
        if previous_run_id is None:
            raise NotFound(f"Previous response with id {str(previous)[:80]!r} not found.", field="previous_response_id")
        if (session_header or "").strip():
            raise ResponsesRequestError(
                "Send previous_response_id or the X-Session-Key header, not both: each names the conversation.",
                "previous_response_id",
            )

    system_parts, turns, tool_results = _conversation(body.get("input"), continuing=previous_run_id is not None)
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise ResponsesRequestError("instructions must be a string.", "instructions")
    system = "\n\n".join(part for part in (instructions, *system_parts) if part)

    params = _sampling_params(body)
    text = body.get("text")
    if text is not None:
        if not isinstance(text, dict):
            raise ResponsesRequestError('text must be an object such as {"format": {"type": "text"}}.', "text")
        for name in text:
            if name not in ("format", "verbosity"):
                raise ResponsesRequestError(f"text.{name} is not supported; text takes format and verbosity.", f"text.{name}")
        if text.get("verbosity") not in (None, "medium"):
            raise ResponsesRequestError("text.verbosity other than 'medium' is not supported; leave it out.", "text.verbosity")
        response_format = response_format_parse(text.get("format"), param="text.format")
        if response_format is not None:
            params["response_format"] = response_format
    client_tools = client_tools_parse(body.get("tools"), flat=True)
    if client_tools:
        params["client_tools"] = client_tools
    tool_choice = tool_choice_parse(body.get("tool_choice"), parallel=body.get("parallel_tool_calls"), flat=True)
    if tool_choice is not None:
        params["tool_choice"] = tool_choice
    if system:
        params["system"] = system
    echo = _echo(body)
    if echo:
        params[ECHO_PARAM] = echo

    session_name = (session_header or "").strip() or None
    if session_name is not None:
        _session_key_check(model, session_name)
    if queue_mode_header is not None and queue_mode_header not in AgentSession.QueueMode.values:
        raise ResponsesRequestError(
            f"X-Queue-Mode must be one of {', '.join(AgentSession.QueueMode.values)}.", "X-Queue-Mode"
        )
    chat = ChatRequest(
        model=model,
        stream=stream,
        system=system,
        turns=turns,
        session_name=session_name,
        params=params,
        queue_mode=queue_mode_header,
        body=body,
        tool_results=tool_results,
        continue_run_id=str(previous_run_id) if previous_run_id else None,
        continue_param="previous_response_id",
    )
    return ResponsesRequest(chat=chat, previous_run_id=previous_run_id)


def _refuse_non_neutral(body: dict) -> None:
    for name, neutral in _NEUTRAL.items():
        value = body.get(name)
        if value is None or any(value == n and type(value) is type(n) for n in neutral):
            continue
        hint = _REFUSAL_HINTS.get(name)
        raise ResponsesRequestError(
            f"{name}={json.dumps(value)[:60]} is not supported by this gateway" + (f" ({hint})" if hint else "")
            + "; leave it out.", name,
        )
    for name in _IDENTIFIERS:
        if body.get(name) is not None and not isinstance(body[name], str):
            raise ResponsesRequestError(f"{name} must be a string.", name)
    truncation = body.get("truncation")
    if truncation not in (None, "auto", "disabled"):
        raise ResponsesRequestError("truncation must be 'auto' or 'disabled'.", "truncation")
    metadata = body.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict) or len(metadata) > METADATA_MAX_KEYS or not all(
            isinstance(k, str) and len(k) <= METADATA_KEY_CHARS and isinstance(v, str) and len(v) <= METADATA_VALUE_CHARS
            for k, v in metadata.items()
        ):
            raise ResponsesRequestError(
                f"metadata must be an object of at most {METADATA_MAX_KEYS} string values, keys up to "
                f"{METADATA_KEY_CHARS} characters and values up to {METADATA_VALUE_CHARS}.", "metadata",
            )


def _boolean(body: dict, name: str, *, default: bool) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ResponsesRequestError(f"{name} must be a boolean.", name)
    return value


def _number(body: dict, name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ResponsesRequestError(f"{name} must be a number between {low:g} and {high:g}.", name)
    return float(value)


def _sampling_params(body: dict) -> dict:
    """The run params of Chat Completions' sampling parameters (sessions/chat.py), from their Responses
    names. Which of them the agent's provider takes is checked by chat_start."""
    params: dict = {}
    max_tokens = body.get("max_output_tokens")
    if max_tokens is not None:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise ResponsesRequestError("max_output_tokens must be a positive integer.", "max_output_tokens")
        params["max_tokens"] = max_tokens
    for name, high in (("temperature", 2), ("top_p", 1)):
        value = _number(body, name, 0, high)
        if value is not None:
            params[name] = value
    reasoning = body.get("reasoning")
    if reasoning is not None:
        if not isinstance(reasoning, dict):
            raise ResponsesRequestError('reasoning must be an object such as {"effort": "low"}.', "reasoning")
        for name, value in reasoning.items():
            if name == "effort":
                if value is not None and value not in REASONING_EFFORTS:
                    raise ResponsesRequestError(
                        f"reasoning.effort must be one of {', '.join(REASONING_EFFORTS)}.", "reasoning.effort"
                    )
            elif value is not None:
                raise ResponsesRequestError(
                    f"reasoning.{name} is not supported (no reasoning summaries are available); leave it out.",
                    f"reasoning.{name}",
                )
        if reasoning.get("effort") is not None:
            params["effort"] = reasoning["effort"]
    return params


def _echo(body: dict) -> dict:
    """What the Response object repeats from the request and cannot be read back from the run's params."""
    echo = {name: body[name] for name in ("instructions", "metadata", "previous_response_id", "tool_choice",
                                          "parallel_tool_calls", "truncation", "store", *_IDENTIFIERS)
            if body.get(name) is not None}
    strict = [tool["name"] for tool in body.get("tools") or () if tool.get("strict")]
    if strict:
        echo["strict_tools"] = strict
    return echo


def _session_key_check(model: str, session_name: str) -> None:
    try:
        session_key_normalize(agent_slug=model, key=session_name)
    except SessionKeyInvalid as exc:
        raise ResponsesRequestError(str(exc), "X-Session-Key")


# --- input items ---------------------------------------------------------------------------------------


def _conversation(value, *, continuing: bool) -> tuple[list[str], list[tuple[str, list[dict]]], dict[str, dict]]:
    """`input` as (system texts, alternating turns of Messages API blocks, the tool results it brings for the
    calls of the last assistant turn: tool_call_id -> tool_result block), the way sessions/chat.py reads
    Chat Completions messages. `function_call` items join the assistant turn before them; each
    `function_call_output` answers a call made before it, or, `continuing` a stored conversation, a call
    of the previous response."""
    if isinstance(value, str):
        return [], [("user", content_parse(value, where="input"))], {}
    if not isinstance(value, list) or not value:
        raise ResponsesRequestError("input is required: a string, or a non-empty array of input items.", "input")
    system_parts: list[str] = []
    turns: list[tuple[str, list[dict]]] = []
    asked: dict[str, str] = {}  # calls of the last assistant turn not answered yet: call_id -> where made
    answered: dict[str, dict] = {}
    for i, item in enumerate(value):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise ResponsesRequestError(f"{where} must be an object (a message or another input item).", where)
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ITEM_ROLES:
                raise ResponsesRequestError(f"{where}.role must be one of {', '.join(ITEM_ROLES)}.", f"{where}.role")
            blocks = content_parse(_chat_parts(item.get("content"), f"{where}.content"), where=f"{where}.content",
                                   allow_empty=True)
            if role in ("system", "developer"):
                system_parts.append("\n".join(b["text"] for b in blocks if b["type"] == "text"))
                continue
            _all_answered(asked, where)
            if role == "assistant":
                _no_history_when_continuing(continuing, where)
                answered = {}
            _turn_add(turns, role, blocks)
        elif kind == "function_call":
            _no_history_when_continuing(continuing, where)
            call_id = item.get("call_id")
            if not isinstance(call_id, str) or not call_id or len(call_id) > 64:
                raise ResponsesRequestError(f"{where}.call_id must be a non-empty string.", f"{where}.call_id")
            block = tool_use_block(call_id, item.get("name"), item.get("arguments"), where=where)
            if not turns or turns[-1][0] != "assistant":
                _all_answered(asked, where)
                asked, answered = {}, {}
            asked[call_id] = where
            _turn_add(turns, "assistant", [block])
        elif kind == "function_call_output":
            call_id = item.get("call_id")
            output = item.get("output")
            blocks = content_parse(_chat_parts(output, f"{where}.output"), where=f"{where}.output", allow_empty=True)
            if any(block["type"] != "text" for block in blocks):
                raise ResponsesRequestError(f"{where}.output may hold only text (input_text parts).", f"{where}.output")
            result = tool_result_block(call_id, blocks, where=f"{where}.call_id")
            if call_id in asked:
                del asked[call_id]
            elif not continuing or call_id in answered:
                # Continuing, it answers a call of the previous response: the engine checks which are waiting.
                raise ResponsesRequestError(
                    f"{where}.call_id {call_id!r} answers no function_call before it"
                    + (" (or answers it twice)." if call_id in answered else
                       "; to answer the calls of a previous response, send its id as previous_response_id."),
                    f"{where}.call_id",
                )
            answered[call_id] = result
            _turn_add(turns, "user", [result])
        else:
            raise ResponsesRequestError(
                f"{where}.type {str(kind)[:40]!r} is not supported; use 'message', 'function_call' or "
                "'function_call_output'.", f"{where}.type",
            )
    if not turns or turns[-1][0] != "user":
        raise ResponsesRequestError("input must end with a user message or function_call_output items.", "input")
    if asked:
        call_id, made_at = next(iter(asked.items()))
        raise ResponsesRequestError(f"{made_at} (call_id {call_id!r}) has no function_call_output answering it.", "input")
    if not turns[-1][1]:
        raise ResponsesRequestError("The last user message of input has no content.", "input")
    return system_parts, turns, answered


def _all_answered(asked: dict[str, str], where: str) -> None:
    if asked:
        call_id, made_at = next(iter(asked.items()))
        raise ResponsesRequestError(
            f"{made_at} (call_id {call_id!r}) has no function_call_output answering it before {where}; send each "
            "call's output right after the calls.", "input",
        )


def _no_history_when_continuing(continuing: bool, where: str) -> None:
    """With previous_response_id the stored conversation is the history: an earlier turn sent again would
    be dropped without a word, so it is refused."""
    if continuing:
        raise ResponsesRequestError(
            f"{where}: with previous_response_id, input holds only what is new (user messages and "
            "function_call_output items); the earlier turns are the stored conversation.", where,
        )


def _turn_add(turns: list[tuple[str, list[dict]]], role: str, blocks: list[dict]) -> None:
    if turns and turns[-1][0] == role:
        turns[-1] = (role, turns[-1][1] + blocks)
    else:
        turns.append((role, blocks))


def _chat_parts(content, where: str):
    """Responses content parts in the Chat Completions dialect that content_parse reads; a string as is."""
    if not isinstance(content, list):
        return content
    parts = []
    for j, part in enumerate(content):
        at = f"{where}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text"):
            parts.append({"type": "text", "text": part.get("text")})
        elif kind == "refusal":
            parts.append({"type": "text", "text": part.get("refusal")})
        elif kind == "input_image":
            if part.get("file_id") is not None:
                raise ResponsesRequestError(
                    f"{at}.file_id: uploaded files are not supported; send image_url (a data URL or an https URL).",
                    f"{at}.file_id",
                )
            url = part.get("image_url")
            if not isinstance(url, str) or not url:
                raise ResponsesRequestError(f"{at}.image_url must be a data URL or an https URL.", f"{at}.image_url")
            parts.append({"type": "image_url", "image_url": {"url": url}})
        elif kind in ("text", "image_url", "image"):
            parts.append(part)  # the Chat Completions and Messages dialects are understood too
        else:
            raise ResponsesRequestError(
                f"{at}.type {str(kind)[:40]!r} is not supported; use 'input_text' or 'input_image'.", f"{at}.type"
            )
    return parts


# --- starting --------------------------------------------------------------------------------------------


def _parse(request):
    """(ResponsesRequest, None) or (None, error response)."""
    try:
        body = json_input.loads(request.body)
    except RequestDataTooBig:
        # (RequestBodyLimitMiddleware answers first; this is for a limit lowered below it.)
        return None, openai_error(413, "The request body is too large.", code="request_too_large")
    except json_input.JSONTooDeep as exc:
        return None, openai_error(400, f"The request body is refused: {exc}", code="json_too_deep")
    except (ValueError, UnicodeDecodeError) as exc:
        return None, openai_error(400, f"The request body is not valid JSON: {exc}", code="invalid_json")
    try:
        return parse_responses_request(
            body,
            session_header=request.headers.get("X-Session-Key"),
            queue_mode_header=request.headers.get("X-Queue-Mode"),
        ), None
    except DomainError as exc:
        return None, domain_error_response(exc)


def _authenticate(authorization: str | None):
    return authenticate_key(bearer_token(authorization), scope="chat", what="the OpenAI-compatible API")


@db_call
def _authenticate_and_start(authorization: str | None, parsed: ResponsesRequest | None, idempotency_key: str | None):
    """Everything a request needs from the database in one thread hop: the key, the agent, the conversation,
    the run. Returns the ChatStarted, or the error response; raises AuthError."""
    principal = _authenticate(authorization)
    if parsed is None:
        return None
    chat = parsed.chat
    agent = agent_by_slug(tenant=principal.tenant, slug=chat.model)
    if agent is None:
        return openai_error(
            404, f"The model '{chat.model}' does not exist: use the slug of one of your agents (GET /v1/models).",
            code="model_not_found", param="model",
        )
    try:
        if parsed.previous_run_id is not None:
            _previous_check(principal.tenant, parsed, idempotency_key)
        elif chat.session_name is None:
            chat.session_name = _conversation_name(idempotency_key)
        return chat_start(tenant=principal.tenant, agent=agent, request=chat, idempotency_key=idempotency_key,
                          endpoint=ENDPOINT)
    except DomainError as exc:
        return domain_error_response(exc)


def _conversation_name(idempotency_key: str | None) -> str:
    """A new conversation's session name. A retry under the same Idempotency-Key must be the same request
    (the key's fingerprint covers the session), so then the name comes from the key."""
    if idempotency_key is None:
        return f"responses-{secrets.token_hex(8)}"
    return f"responses-{hashlib.sha256(idempotency_key.encode()).hexdigest()[:16]}"


def _previous_check(tenant, parsed: ResponsesRequest, idempotency_key: str | None) -> None:
    """previous_response_id names a response of this tenant, the latest of its conversation (or the one
    this Idempotency-Key already started, for a retry)."""
    previous = Run.objects.filter(tenant=tenant, pk=parsed.previous_run_id).only("pk", "session_id").first()
    if previous is None:
        raise NotFound(f"Previous response with id {response_id(parsed.previous_run_id)!r} not found.",
                       field="previous_response_id")
    latest = Run.objects.filter(session_id=previous.session_id).order_by("-created_at").only("pk").first()
    if latest.pk == previous.pk:
        return
    if idempotency_key is not None and IdempotencyKey.objects.filter(
        tenant=tenant, endpoint=ENDPOINT, key=idempotency_key, run_id=latest.pk
    ).exists():
        return
    raise ResponsesRequestError(
        f"previous_response_id {response_id(previous.pk)!r} is not the latest response of its conversation "
        f"({response_id(latest.pk)!r}); a conversation goes on from its latest response only, branching from "
        "an earlier one is not supported.", "previous_response_id",
    )


@csrf_exempt
@require_POST
async def create_response(request):
    # Parse first, but report in the order a client fixes things: credentials, then the body.
    parsed, body_error = _parse(request)
    idempotency_key = None
    try:
        idempotency_key = idempotency_key_from(request.headers)
    except IdempotencyKeyInvalid as exc:
        parsed, body_error = None, body_error or domain_error_response(exc)
    try:
        outcome = await _authenticate_and_start(request.headers.get("Authorization"), parsed, idempotency_key)
    except AuthError as exc:
        return auth_error_response(exc)
    if body_error is not None:
        return body_error
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
        response = await _complete(shell)
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
        return _message_id(self.run_id)


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
        "type": "function_call", "id": _function_call_id(call["id"]), "call_id": call["id"], "name": call["name"],
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


async def _complete(shell: _Shell):
    """Wait for the run's end. A failed run is an HTTP error, as on Chat Completions: a client that does not
    look at `status` must not take an empty output for an answer."""
    run_id = shell.run_id
    try:
        async for event in follow_run(run_id):
            if drain_expired():
                response = openai_error(503, restarting_message(run_id), type="server_restarting", code="server_restarting")
                response["Retry-After"] = "1"
                return response
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
        return openai_error(504, f"{exc}; the run continues: GET /v1/responses/{response_id(run_id)}.",
                            type="timeout", code="timeout")


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
    principal = _authenticate(authorization)
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
