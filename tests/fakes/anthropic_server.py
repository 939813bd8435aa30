"""Fake Anthropic Messages API for the test suite.

The real ``anthropic`` SDK talks to this server through ``base_url``, so the
wire format (JSON bodies, SSE event sequence, error envelopes, headers) follows
the real API closely.

Behaviour is scripted from inside the conversation: the last user message may
carry directives such as ``[[deltas=5]]``, ``[[delay_ms=20]]``,
``[[status=529]]`` or ``[[tool=get_weather:{"city":"Paris"}]]``; they are
stripped from the echoed text.  See ``_Script`` for the full list.

``[[tool_loop=NAME:{json}]]`` is the one directive read from EVERY user
message, not just the last: while it is anywhere in the conversation the
fake answers each turn, tool results included, with that tool call again.
It models a runaway agent, for testing step caps.

``[[replies=FIRST||SECOND||...]]`` scripts a multi-turn exchange: found in
the latest user message that has it, the fake answers with the Nth reply
when N-1 assistant turns follow that message (the last one thereafter),
unless the last user message scripts something else. It models a model that
answers a follow-up (a repair request, say) differently.

``[[hold=KEY:N]]`` pauses a streamed reply after its Nth text delta (holds a
reply asked for whole) until a test calls ``POST /_fake/release?key=KEY``; a
released key stays released (a retried request streams straight through)
until ``/_fake/reset``. It lets a
test act while a stream is surely still open, however slow the machine.

Image blocks are echoed as ``[image: <media type>, <N> bytes]`` (or
``[image: <url>]``), so a test sees what reached the model.

Run standalone with ``python -m tests.fakes.anthropic_server [--host H] [--port P]``;
it prints ``LISTENING <port>`` once ready and exits cleanly on SIGTERM/SIGINT.
Use ``make_app()`` to mount it in-process instead.

Streaming replies are rendered to bytes up front, so the per-event work while
streaming is one optional sleep plus one write; that keeps hundreds of
concurrent streams cheap.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import json
import math
import random
import re
import string
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes.serving import serve_main

MAX_RECORDED_REQUESTS = 1000
RECORDED_HEADERS = ("x-api-key", "authorization", "anthropic-version", "content-type")

ERROR_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
STATUS_BY_ERROR_TYPE = {v: k for k, v in ERROR_TYPE_BY_STATUS.items()}
DEFAULT_ERROR_MESSAGES = {
    "invalid_request_error": "Invalid request",
    "authentication_error": "invalid x-api-key",
    "billing_error": "Your credit balance is too low",
    "permission_error": "Your API key does not have permission to use the specified resource",
    "not_found_error": "Not found",
    "request_too_large": "Request exceeds the maximum allowed number of bytes",
    "rate_limit_error": "Number of requests has exceeded your rate limit",
    "api_error": "Internal server error",
    "timeout_error": "Request timed out",
    "overloaded_error": "Overloaded",
}

# Tool input JSON is streamed in slices of this many characters.
TOOL_JSON_CHUNK = 16
TOKENS_PER_TOOL_USE = 10

# Stands for an event's bytes where a `[[hold]]` stream pauses.
_HOLD = object()

_ALNUM = string.ascii_letters + string.digits
_JSON_DECODER = json.JSONDecoder()

DIRECTIVE_KEYS = (
    "deltas",
    "delay_ms",
    "ttft_ms",
    "reply",
    "status",
    "fail_first",
    "midstream_error",
    "tool",
    "tool_loop",
    "text_before_tool",
    "replies",
    "hold",
)
# Only known keys are treated as directives, so ordinary "[[wiki links]]" in a
# prompt are echoed untouched.
_DIRECTIVE_START = re.compile(r"\[\[(" + "|".join(DIRECTIVE_KEYS) + r")(=|\]\])")
_WORD_PIECES = re.compile(r"\s*\S+\s*")


class DirectiveError(ValueError):
    """A directive is malformed; reported to the client as a 400."""


def _random_id(prefix: str) -> str:
    return prefix + "".join(random.choices(_ALNUM, k=24))


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def _sse(data: dict[str, Any]) -> bytes:
    # Every Anthropic stream event repeats its event name as data["type"].
    return f"event: {data['type']}\ndata: {_dumps(data)}\n\n".encode()


def _error_body(error_type: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type, "message": message}}


def _error_type_for(status: int) -> str:
    if status in ERROR_TYPE_BY_STATUS:
        return ERROR_TYPE_BY_STATUS[status]
    return "api_error" if status >= 500 else "invalid_request_error"


def _error_response(
    status: int, request_id: str, message: str | None = None, error_type: str | None = None
) -> web.Response:
    error_type = error_type or _error_type_for(status)
    headers = {"request-id": request_id}
    if status == 429:
        headers["retry-after"] = "0"
    return web.json_response(
        _error_body(error_type, message or DEFAULT_ERROR_MESSAGES.get(error_type, "Error")),
        status=status,
        headers=headers,
    )


# --------------------------------------------------------------------------- #
# Request parsing
# --------------------------------------------------------------------------- #


def _api_key(request: web.Request) -> str | None:
    """The caller's key from ``x-api-key``, else from ``Authorization: Bearer``.

    anthropic SDK 2.x sends ``api_key`` as a bearer token rather than
    ``x-api-key``, so both must be accepted for the real SDK to get through.
    """
    if "x-api-key" in request.headers:
        return request.headers["x-api-key"]
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def _blocks_text(content: Any) -> str:
    """Text of a message/system/tool_result content: the string itself or its text blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text"
        )
    return ""


def _validate(body: dict[str, Any]) -> str | None:
    """Return an invalid_request_error message, or None when the body is acceptable."""
    for name in ("model", "max_tokens", "messages"):
        if name not in body:
            return f"{name}: Field required"
    if not isinstance(body["model"], str) or not body["model"]:
        return "model: Input should be a non-empty string"
    max_tokens = body["max_tokens"]
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        return "max_tokens: Input should be a positive integer"
    messages = body["messages"]
    if not isinstance(messages, list):
        return "messages: Input should be a valid list"
    if not messages:
        return "messages: at least one message is required"
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
        if not isinstance(message.get("content"), (str, list)):
            return f"messages.{i}.content: Input should be a string or a list of content blocks"
    system = body.get("system")
    if system is not None and not isinstance(system, (str, list)):
        return "system: Input should be a string or a list of text blocks"
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1):
            return f"{name}: Input should be a number between 0 and 1"
    stops = body.get("stop_sequences")
    if stops is not None and (not isinstance(stops, list) or not all(isinstance(s, str) for s in stops)):
        return "stop_sequences: Input should be a list of strings"
    effort = (body.get("output_config") or {}).get("effort")
    if effort is not None and effort not in ("low", "medium", "high", "xhigh", "max"):
        return "output_config.effort: Input should be 'low', 'medium', 'high', 'xhigh' or 'max'"
    return None


def _input_tokens(body: dict[str, Any]) -> int:
    chars = len(_blocks_text(body.get("system")))
    chars += sum(len(_blocks_text(m["content"])) for m in body["messages"])
    return max(1, math.ceil(chars / 4))


def _scan_tool_value(text: str, start: int) -> tuple[str, int]:
    """Parse ``NAME:JSON]]`` from text[start:]; return (raw value, index after ``]]``).

    The JSON is decoded rather than searched for ``]]`` so inputs such as
    ``{"m":[[1]]}`` work.
    """
    close = text.find("]]", start)
    colon = text.find(":", start, close if close >= 0 else len(text))
    if colon < 0:
        raise DirectiveError("tool directive must look like [[tool=NAME:{...}]]")
    pos = colon + 1
    while pos < len(text) and text[pos].isspace():
        pos += 1
    try:
        _, pos = _JSON_DECODER.raw_decode(text, pos)
    except ValueError as exc:
        raise DirectiveError(f"tool directive has invalid JSON input: {exc}") from None
    while pos < len(text) and text[pos].isspace():
        pos += 1
    if not text.startswith("]]", pos):
        raise DirectiveError("tool directive must end with ]] right after its JSON input")
    return text[start:pos], pos + 2


def parse_directives(text: str, start: re.Pattern = _DIRECTIVE_START) -> tuple[str, list[tuple[str, str | None]]]:
    """Strip directives from text; return (remaining text, [(key, value-or-None)]). `start` matches the
    directives a fake knows (tests/fakes/openai_server.py knows a few of its own)."""
    directives: list[tuple[str, str | None]] = []
    kept: list[str] = []
    pos = 0
    while (m := start.search(text, pos)) is not None:
        key, sep = m.group(1), m.group(2)
        if sep == "]]":
            value, end = None, m.end()
        elif key in ("tool", "tool_loop"):
            value, end = _scan_tool_value(text, m.end())
        else:
            close = text.find("]]", m.end())
            if close < 0:
                break  # unterminated: leave the rest as plain text
            value, end = text[m.end() : close], close + 2
        directives.append((key, value))
        kept.append(text[pos : m.start()])
        # Swallow spaces after the directive so "a [[x=1]] b" echoes as "a b".
        while end < len(text) and text[end] in " \t":
            end += 1
        pos = end
    if not directives:
        return text, directives
    kept.append(text[pos:])
    return "".join(kept).strip(), directives


def _int_value(key: str, value: str, minimum: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise DirectiveError(f"{key} expects an integer, got {value!r}") from None
    if number < minimum:
        raise DirectiveError(f"{key} must be >= {minimum}, got {number}")
    return number


@dataclass
class _Script:
    """What the directives of the last user message ask for."""

    deltas: int | None = None  # number of text deltas; None = one per word
    delay: float = 0.0  # seconds between content_block_delta events
    ttft: float = 0.0  # seconds before the first content_block_delta
    reply: str | None = None
    status: int | None = None
    fail_first: tuple[str, int] | None = None  # (key, failures)
    midstream: tuple[str, int] | None = None  # (error type, text deltas before the error)
    tools: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    text_before_tool: str | None = None
    replies: list[str] | None = None
    hold: tuple[str, int] | None = None  # (key, text deltas before the pause)

    @classmethod
    def from_directives(cls, directives: list[tuple[str, str | None]]) -> _Script:
        script = cls()
        for key, value in directives:
            if value is None:
                if key != "midstream_error":
                    raise DirectiveError(f"directive [[{key}]] needs a value: [[{key}=...]]")
                value = "overloaded_error"
            if key == "deltas":
                script.deltas = _int_value(key, value, 1)
            elif key == "delay_ms":
                script.delay = _int_value(key, value, 0) / 1000
            elif key == "ttft_ms":
                script.ttft = _int_value(key, value, 0) / 1000
            elif key == "reply":
                script.reply = value
            elif key == "status":
                status = _int_value(key, value, 400)
                if status > 599:
                    raise DirectiveError(f"status must be an HTTP error code, got {status}")
                script.status = status
            elif key == "fail_first":
                fail_key, sep, count = value.rpartition(":")
                if not sep or not fail_key:
                    raise DirectiveError("fail_first must look like [[fail_first=KEY:N]]")
                script.fail_first = (fail_key, _int_value(key, count, 0))
            elif key == "midstream_error":
                error_type, sep, after = value.partition(":")
                script.midstream = (
                    error_type or "overloaded_error",
                    _int_value(key, after, 0) if sep else 1,
                )
            elif key in ("tool", "tool_loop"):
                name, _, raw_input = value.partition(":")
                tool_input = json.loads(raw_input)
                if not name or not isinstance(tool_input, dict):
                    raise DirectiveError("tool directive needs a name and a JSON object input")
                script.tools.append((name, tool_input))
            elif key == "text_before_tool":
                script.text_before_tool = value
            elif key == "replies":
                script.replies = value.split("||")
            elif key == "hold":
                hold_key, sep, after = value.rpartition(":")
                if not sep or not hold_key:
                    raise DirectiveError("hold must look like [[hold=KEY:N]]")
                script.hold = (hold_key, _int_value(key, after, 0))
        return script


def _parse_last_user_message(
    messages: list[dict[str, Any]],
) -> tuple[str, list[str] | None, _Script]:
    """Return (echo text, tool result texts or None, script) for the last user message.

    The tool-result list is only set when that message holds nothing but
    tool_result blocks, i.e. the client is coming back from a tool loop.
    """
    last = next((m for m in reversed(messages) if m["role"] == "user"), None)
    if last is None:
        return "", None, _Script()
    content = last["content"]
    tool_results = None
    if (
        isinstance(content, list)
        and content
        and all(isinstance(b, dict) and b.get("type") == "tool_result" for b in content)
    ):
        tool_results = [_blocks_text(b.get("content")) for b in content]
    text, directives = parse_directives(_blocks_text(content))
    images = _images_described(content)
    return " ".join(p for p in (text, images) if p), tool_results, _Script.from_directives(directives)


def _images_described(content: Any) -> str:
    if not isinstance(content, list):
        return ""
    described = []
    for block in content:
        if not isinstance(block, dict) or block.get("type") != "image":
            continue
        source = block.get("source") or {}
        if source.get("type") == "base64":
            size = len(base64.b64decode(source.get("data") or "", validate=False))
            described.append(f"[image: {source.get('media_type')}, {size} bytes]")
        else:
            described.append(f"[image: {source.get('url')}]")
    return " ".join(described)


def _scripted_reply(messages: list[dict[str, Any]]) -> str | None:
    """The reply ``[[replies=...]]`` scripts for this point of the conversation (see the module doc)."""
    answered = 0
    for message in reversed(messages):
        if message["role"] == "assistant":
            answered += 1
            continue
        _, directives = parse_directives(_blocks_text(message["content"]))
        replies = _Script.from_directives([d for d in directives if d[0] == "replies"]).replies
        if replies:
            return replies[min(answered, len(replies) - 1)]
    return None


def _looping_tools(messages: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """Tool calls asked for by ``[[tool_loop=...]]`` in any user message's text."""
    tools: list[tuple[str, dict[str, Any]]] = []
    for message in messages:
        if message["role"] != "user":
            continue
        _, directives = parse_directives(_blocks_text(message["content"]))
        tools.extend(_Script.from_directives([d for d in directives if d[0] == "tool_loop"]).tools)
    return tools


def _split_text(text: str, parts: int | None) -> list[str]:
    """Split text into deltas whose concatenation is exactly text."""
    if not text:
        return []
    if parts is None:
        return _WORD_PIECES.findall(text) or [text]
    parts = min(parts, len(text))
    size, extra = divmod(len(text), parts)
    pieces, pos = [], 0
    for i in range(parts):
        end = pos + size + (1 if i < extra else 0)
        pieces.append(text[pos:end])
        pos = end
    return pieces


# --------------------------------------------------------------------------- #
# Server
# --------------------------------------------------------------------------- #


class FakeAnthropicServer:
    """Request handlers plus the in-memory state the introspection endpoints expose."""

    def __init__(self) -> None:
        self.requests: collections.deque[dict[str, Any]] = collections.deque(
            maxlen=MAX_RECORDED_REQUESTS
        )
        self.fail_counters: dict[str, int] = {}
        self.holds: dict[str, asyncio.Event] = {}  # set once released

    # ----- introspection -------------------------------------------------- #

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def list_requests(self, request: web.Request) -> web.Response:
        try:
            limit = int(request.query.get("limit", "50"))
        except ValueError:
            return _error_response(400, _random_id("req_"), "limit must be an integer")
        recorded = list(self.requests)
        return web.json_response(recorded[max(0, len(recorded) - limit) :] if limit > 0 else [])

    async def reset(self, request: web.Request) -> web.Response:
        self.requests.clear()
        self.fail_counters.clear()
        for gate in self.holds.values():
            gate.set()  # streams still held finish rather than hang
        self.holds.clear()
        return web.json_response({"ok": True})

    async def release(self, request: web.Request) -> web.Response:
        key = request.query.get("key")
        if not key:
            return _error_response(400, _random_id("req_"), "release needs ?key=KEY (the key of [[hold=KEY:N]])")
        self._hold_gate(key).set()
        return web.json_response({"ok": True, "key": key})

    def _hold_gate(self, key: str) -> asyncio.Event:
        """What streams held by `[[hold=KEY:N]]` wait for; set by its release."""
        return self.holds.setdefault(key, asyncio.Event())

    async def not_found(self, request: web.Request) -> web.Response:
        message = f"Not found: {request.method} {request.path}"
        return _error_response(404, _random_id("req_"), message)

    # ----- /v1/messages --------------------------------------------------- #

    async def messages(self, request: web.Request) -> web.StreamResponse:
        request_id = _random_id("req_")
        try:
            body = json.loads(await request.read())
        except ValueError:
            body = None
        self.requests.append(
            {
                "headers": {
                    h: request.headers[h] for h in RECORDED_HEADERS if h in request.headers
                },
                "body": body,
                "at": time.time(),
            }
        )

        if _api_key(request) in (None, "", "bad-key"):
            return _error_response(401, request_id, "invalid x-api-key")
        if not isinstance(body, dict):
            return _error_response(400, request_id, "Request body must be a JSON object")
        if (problem := _validate(body)) is not None:
            return _error_response(400, request_id, problem)
        model = body["model"]
        if "unknown" in model:
            return _error_response(404, request_id, f"model: {model}")

        try:
            echo_text, tool_results, script = _parse_last_user_message(body["messages"])
            if not script.tools:
                script.tools = _looping_tools(body["messages"])
            if not script.tools and script.reply is None:
                script.reply = _scripted_reply(body["messages"])
        except ValueError as exc:  # includes DirectiveError and bad tool JSON
            return _error_response(400, request_id, f"invalid test directive: {exc}")

        if script.status is not None:
            return _error_response(script.status, request_id)
        if script.fail_first is not None:
            fail_key, failures = script.fail_first
            seen = self.fail_counters.get(fail_key, 0) + 1
            self.fail_counters[fail_key] = seen
            if seen <= failures:
                return _error_response(529, request_id)

        content = self._build_content(echo_text, tool_results, script)
        message = {
            "id": _random_id("msg_"),
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": "tool_use" if script.tools else "end_turn",
            "stop_sequence": None,
            "usage": {
                "input_tokens": _input_tokens(body),
                "output_tokens": self._output_tokens(content),
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
            },
        }

        if body.get("stream"):
            return await self._stream(request, request_id, message, script)
        return await self._whole(request_id, message, script)

    @staticmethod
    def _build_content(
        echo_text: str, tool_results: list[str] | None, script: _Script
    ) -> list[dict[str, Any]]:
        if script.tools:
            blocks: list[dict[str, Any]] = []
            if script.text_before_tool is not None:
                blocks.append({"type": "text", "text": script.text_before_tool})
            blocks.extend(
                {"type": "tool_use", "id": _random_id("toolu_"), "name": name, "input": tool_input}
                for name, tool_input in script.tools
            )
            return blocks
        if script.reply is not None:
            text = script.reply
        elif tool_results is not None:
            text = "Tool results: " + "".join(tool_results)
        else:
            text = "Echo: " + echo_text
        return [{"type": "text", "text": text}]

    @staticmethod
    def _output_tokens(content: list[dict[str, Any]]) -> int:
        tokens = sum(
            len(b["text"].split()) if b["type"] == "text" else TOKENS_PER_TOOL_USE for b in content
        )
        return max(1, tokens)

    @staticmethod
    def _render_stream(message: dict[str, Any], script: _Script) -> list[tuple[float, Any]]:
        """Pre-render the whole SSE stream as (sleep-before, event bytes) pairs; a `_HOLD` in place of
        the bytes is where `[[hold]]` pauses."""
        start_message = dict(
            message,
            content=[],
            stop_reason=None,
            usage=dict(message["usage"], output_tokens=1),
        )
        events = [
            (0.0, _sse({"type": "message_start", "message": start_message})),
            (0.0, _sse({"type": "ping"})),
        ]
        text_delta_positions: list[int] = []  # index in events of each text delta
        first_delta = True
        for index, block in enumerate(message["content"]):
            if block["type"] == "text":
                start_block = {"type": "text", "text": ""}
                deltas = [
                    {"type": "text_delta", "text": t}
                    for t in _split_text(block["text"], script.deltas)
                ]
            else:
                start_block = {
                    "type": "tool_use", "id": block["id"], "name": block["name"], "input": {}
                }
                raw = _dumps(block["input"])
                # Like the real API, the first input_json_delta is empty.
                deltas = [{"type": "input_json_delta", "partial_json": ""}] + [
                    {"type": "input_json_delta", "partial_json": raw[i : i + TOOL_JSON_CHUNK]}
                    for i in range(0, len(raw), TOOL_JSON_CHUNK)
                ]
            events.append(
                (0.0, _sse({"type": "content_block_start", "index": index, "content_block": start_block}))
            )
            for delta in deltas:
                if delta["type"] == "text_delta":
                    text_delta_positions.append(len(events))
                events.append(
                    (
                        script.ttft if first_delta else script.delay,
                        _sse({"type": "content_block_delta", "index": index, "delta": delta}),
                    )
                )
                first_delta = False
            events.append((0.0, _sse({"type": "content_block_stop", "index": index})))
        message_delta = {
            "type": "message_delta",
            "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
            "usage": {"output_tokens": message["usage"]["output_tokens"]},
        }
        events.append((0.0, _sse(message_delta)))
        events.append((0.0, _sse({"type": "message_stop"})))

        if script.midstream is not None:
            error_type, after = script.midstream
            if after == 0 and text_delta_positions:
                cut = text_delta_positions[0]
            elif 0 < after <= len(text_delta_positions):
                cut = text_delta_positions[after - 1] + 1
            else:  # fewer text deltas than requested: fail right before message_delta
                cut = len(events) - 2
            error = _error_body(error_type, DEFAULT_ERROR_MESSAGES.get(error_type, "Error"))
            events = events[:cut] + [(0.0, _sse(error))]
        if script.hold is not None:
            # After the Nth text delta (the last, if there are fewer); N=0: before the first.
            after = min(script.hold[1], len(text_delta_positions))
            at = text_delta_positions[after - 1] + 1 if after else 2
            events.insert(min(at, len(events)), (0.0, _HOLD))
        return events

    async def _whole(
        self, request_id: str, message: dict[str, Any], script: _Script
    ) -> web.Response:
        """A reply asked for whole (no `stream`) comes when its stream would have ended: a model writes it
        at the same pace. A `[[hold]]` holds it until released; a `[[midstream_error]]` makes it that
        error, when the stream would have failed."""
        waited = 0.0
        for pause, payload in self._render_stream(message, script):
            waited += pause
            if payload is _HOLD:
                await asyncio.sleep(waited)
                waited = 0.0
                await self._hold_gate(script.hold[0]).wait()
        if waited:
            await asyncio.sleep(waited)
        if script.midstream is not None:
            error_type = script.midstream[0]
            return _error_response(
                STATUS_BY_ERROR_TYPE.get(error_type, 500), request_id, error_type=error_type
            )
        return web.json_response(message, headers={"request-id": request_id}, dumps=_dumps)

    async def _stream(
        self, request: web.Request, request_id: str, message: dict[str, Any], script: _Script
    ) -> web.StreamResponse:
        events = self._render_stream(message, script)
        response = web.StreamResponse(
            headers={
                "content-type": "text/event-stream; charset=utf-8",
                "cache-control": "no-cache",
                "request-id": request_id,
            }
        )
        try:
            await response.prepare(request)
            for pause, payload in events:
                if pause:
                    await asyncio.sleep(pause)
                if payload is _HOLD:
                    await self._hold_gate(script.hold[0]).wait()
                    continue
                await response.write(payload)
            await response.write_eof()
        except ConnectionResetError:
            pass  # client went away; nothing left to do
        return response


def make_app() -> web.Application:
    server = FakeAnthropicServer()
    # Anthropic takes requests of up to 32 MB (images).
    app = web.Application(client_max_size=32 * 1024 * 1024)
    app.router.add_post("/v1/messages", server.messages)
    app.router.add_get("/_fake/requests", server.list_requests)
    app.router.add_post("/_fake/reset", server.reset)
    app.router.add_post("/_fake/release", server.release)
    app.router.add_get("/_fake/health", server.health)
    # Registered last so it only catches what nothing else matched.
    app.router.add_route("*", "/{tail:.*}", server.not_found)
    return app


def main() -> None:
    serve_main(make_app, "Fake Anthropic Messages API server", backlog=2048)


if __name__ == "__main__":
    main()
