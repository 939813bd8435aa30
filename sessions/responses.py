"""The OpenAI Responses API's requests, read into what the engine takes (the edge: sessions/responses_api.py).

- A response is a run: its id is `resp_<run id as hex>`, so GET finds it in Postgres without a table of
  its own, and `previous_response_id` names the run whose session a request continues.
- A conversation is a persistent session of its own, `agent:<agent>:responses-<name>`: any later request
  may continue it, so it is not an ephemeral session (those close when their run ends). A request
  without `previous_response_id` starts one from its `input` (earlier turns included); a request with it
  adds only new input (user messages, `function_call_output` items) to the stored conversation, and only
  to its latest response: a branch from an earlier one would silently carry on from the latest.
- Every parameter is taken, refused with a 400 naming it, or accepted because it changes nothing here
  (identifiers, `store`: everything is stored); an unknown one is refused rather than ignored.
"""

import hashlib
import json
import secrets
import uuid
from dataclasses import dataclass

from beamclaw_project.errors import InvalidInput, NotFound
from sessions.chat import REASONING_EFFORTS, ChatRequest, chat_start, number_param, turn_add
from sessions.client_tools import client_tools_parse, tool_choice_parse, tool_result_block, tool_use_block
from sessions.content import content_parse
from sessions.models import AgentSession, IdempotencyKey, Run
from sessions.runs import response_format_parse
from sessions.services import SessionKeyInvalid, session_key_normalize

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


def message_item_id(run_id) -> str:
    return "msg_" + uuid.UUID(str(run_id)).hex


def function_call_item_id(call_id: str) -> str:
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
        value = number_param(body, name, 0, high)
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
            turn_add(turns, role, blocks)
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
            turn_add(turns, "assistant", [block])
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
            turn_add(turns, "user", [result])
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


# --- starting ------------------------------------------------------------------------------------------


def responses_start(*, tenant, agent, parsed: ResponsesRequest, idempotency_key: str | None):
    """Start the run of a parsed request (chat_start's ChatStarted): in the conversation of
    previous_response_id, or in a new one."""
    chat = parsed.chat
    if parsed.previous_run_id is not None:
        _previous_check(tenant, parsed, idempotency_key)
    elif chat.session_name is None:
        chat.session_name = _conversation_name(idempotency_key)
    try:
        return chat_start(tenant=tenant, agent=agent, request=chat, idempotency_key=idempotency_key,
                          endpoint=ENDPOINT)
    except InvalidInput as exc:
        if exc.field in _CHAT_RESULT_FIELDS:
            exc.field = "input"  # the engine checks tool results under Chat Completions' names
        raise


# Where the engine's check of a request's tool results points, on Chat Completions (client_calls.py).
_CHAT_RESULT_FIELDS = ("tool_call_id", "messages")


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
