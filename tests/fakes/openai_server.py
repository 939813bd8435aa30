"""Fake OpenAI-compatible Chat Completions API for the test suite (what vLLM, Ollama, LM Studio and
LiteLLM serve, and OpenAI itself).

The real ``openai`` SDK talks to this server through ``base_url``, so the wire format follows the real
API: JSON bodies, the SSE chunk sequence (a role delta, content deltas, ``tool_calls`` deltas that give
index, id and name first and then argument fragments, a chunk with ``finish_reason``, a usage chunk with
empty ``choices`` when ``stream_options.include_usage`` is set, then ``data: [DONE]``), and errors in
OpenAI's ``{"error": {"message", "type", "param", "code"}}`` envelope. It also checks what a real server
checks about the conversation, so a broken translation fails here as it would there: a ``tool`` message
must answer a ``tool_call_id`` of the assistant message before it, and every call must be answered.

Behaviour is scripted like the fake Anthropic server (tests/fakes/anthropic_server.py), from the last
user message: ``[[tool=NAME:{json}]]``, ``[[status=N]]``, ``[[reply=TEXT]]``, ``[[deltas=N]]``,
``[[delay_ms=N]]``, ``[[ttft_ms=N]]``, ``[[fail_first=KEY:N]]`` (503 the first N times),
``[[midstream_error=TYPE:N]]`` (an error event after N content deltas), ``[[text_before_tool=TEXT]]``
and ``[[usage=off]]`` (a server that sends no usage). A conversation that ends with ``tool`` messages is
answered "Tool results: " plus their contents; otherwise the reply is "Echo: " plus the user's text.
A model whose name contains "unknown" is a 404 ``model_not_found``.

``GET /_fake/requests?limit=N`` returns the recorded requests (headers and body), newest last.
Run with ``python -m tests.fakes.openai_server [--host H] [--port P]``.
"""

from __future__ import annotations

import asyncio
import collections
import json
import math
import re
import time
from typing import Any

from aiohttp import web

from tests.fakes.anthropic_server import (
    _random_id,
    _Script,
    _split_text,
    parse_directives,
)
from tests.fakes.serving import serve_main

MAX_RECORDED_REQUESTS = 1000
RECORDED_HEADERS = ("authorization", "content-type")
TOOL_JSON_CHUNK = 16

DIRECTIVE_KEYS = ("deltas", "delay_ms", "ttft_ms", "reply", "status", "fail_first", "midstream_error", "tool",
                  "tool_loop", "text_before_tool", "usage")
_DIRECTIVE_START = re.compile(r"\[\[(" + "|".join(DIRECTIVE_KEYS) + r")(=|\]\])")
ERROR_BY_STATUS = {
    400: ("invalid_request_error", None, "Invalid request"),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided"),
    403: ("invalid_request_error", "unsupported_country_region_territory", "Forbidden"),
    404: ("invalid_request_error", "model_not_found", "The model does not exist"),
    429: ("rate_limit_error", "rate_limit_exceeded", "Rate limit reached"),
    500: ("server_error", None, "The server had an error while processing your request"),
    503: ("server_error", None, "The engine is currently overloaded, please try again later"),
}


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def _error(status: int, message: str | None = None, *, param: str | None = None, code: str | None = None) -> web.Response:
    error_type, default_code, default_message = ERROR_BY_STATUS.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", None, "Error")
    )
    body = {"error": {"message": message or default_message, "type": error_type, "param": param,
                      "code": code or default_code}}
    return web.json_response(body, status=status, headers={"x-request-id": _random_id("req_")})


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def _validate(body: dict[str, Any]) -> tuple[str, str] | None:
    """(message, param) of what a real server would refuse, or None."""
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "you must provide a model parameter", "model"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages must be a non-empty array", "messages"
    open_calls: list[str] = []
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("system", "developer", "user", "assistant", "tool"):
            return f"Invalid value for 'messages[{i}].role'", f"messages.[{i}].role"
        if role == "tool":
            if message.get("tool_call_id") not in open_calls:
                return ("Invalid parameter: messages with role 'tool' must be a response to a preceeding message "
                        "with 'tool_calls'."), f"messages.[{i}].role"
            open_calls.remove(message["tool_call_id"])
            continue
        if open_calls:
            return ("An assistant message with 'tool_calls' must be followed by tool messages responding to each "
                    f"'tool_call_id'. The following tool_call_ids did not have response messages: {', '.join(open_calls)}"), \
                f"messages.[{i}].role"
        if role == "assistant":
            for call in message.get("tool_calls") or ():
                function = call.get("function") or {}
                if call.get("type") != "function" or not call.get("id") or not isinstance(function.get("arguments"), str):
                    return f"Invalid tool call in 'messages[{i}].tool_calls'", f"messages.[{i}].tool_calls"
                open_calls.append(call["id"])
            if message.get("content") is None and not message.get("tool_calls"):
                return f"messages[{i}]: an assistant message needs content or tool_calls", f"messages.[{i}].content"
        elif not isinstance(message.get("content"), (str, list)):
            return f"Invalid type for 'messages[{i}].content'", f"messages.[{i}].content"
    for name, low, high in (("temperature", 0, 2), ("top_p", 0, 1), ("presence_penalty", -2, 2), ("frequency_penalty", -2, 2)):
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high):
            return f"Invalid '{name}': must be between {low} and {high}", name
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            return f"Invalid '{name}': integer below minimum value", name
    stop = body.get("stop")
    if stop is not None and not isinstance(stop, str) and (not isinstance(stop, list) or len(stop) > 4):
        return "Invalid 'stop': up to 4 sequences", "stop"
    for i, tool in enumerate(body.get("tools") or ()):
        if not isinstance(tool, dict) or tool.get("type") != "function" or not (tool.get("function") or {}).get("name"):
            return f"Invalid 'tools[{i}]': expected a function tool", f"tools[{i}]"
    return None


class FakeOpenAIServer:
    def __init__(self) -> None:
        self.requests: collections.deque[dict[str, Any]] = collections.deque(maxlen=MAX_RECORDED_REQUESTS)
        self.fail_counters: dict[str, int] = {}

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def list_requests(self, request: web.Request) -> web.Response:
        limit = int(request.query.get("limit", "50"))
        recorded = list(self.requests)
        return web.json_response(recorded[max(0, len(recorded) - limit):] if limit > 0 else [])

    async def reset(self, request: web.Request) -> web.Response:
        self.requests.clear()
        self.fail_counters.clear()
        return web.json_response({"ok": True})

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": "fake-model", "object": "model", "created": 0, "owned_by": "fake"}
        ]})

    async def not_found(self, request: web.Request) -> web.Response:
        return _error(404, f"Unknown request URL: {request.method} {request.path}", code="unknown_url")

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        try:
            body = json.loads(await request.read())
        except ValueError:
            body = None
        self.requests.append({
            "headers": {h: request.headers[h] for h in RECORDED_HEADERS if h in request.headers},
            "body": body,
            "at": time.time(),
        })
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or key.strip() in ("", "bad-key"):
            return _error(401, "Incorrect API key provided: bad-key.")
        if not isinstance(body, dict):
            return _error(400, "We could not parse the JSON body of your request.")
        if (problem := _validate(body)) is not None:
            return _error(400, problem[0], param=problem[1])
        if "unknown" in body["model"]:
            return _error(404, f"The model `{body['model']}` does not exist or you do not have access to it.")

        messages = body["messages"]
        try:
            script, echo, tool_results, usage_off = self._script(messages)
        except ValueError as exc:
            return _error(400, f"invalid test directive: {exc}")
        if script.status is not None:
            return _error(script.status)
        if script.fail_first is not None:
            fail_key, failures = script.fail_first
            self.fail_counters[fail_key] = seen = self.fail_counters.get(fail_key, 0) + 1
            if seen <= failures:
                return _error(503)

        text, calls = self._reply(echo, tool_results, script)
        prompt_tokens = max(1, math.ceil(sum(len(_text(m.get("content"))) for m in messages) / 4))
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": max(1, len(text.split()) + 10 * len(calls))}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        finish_reason = "tool_calls" if calls else "stop"
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage")) and not usage_off
            return await self._stream(request, body["model"], text, calls, finish_reason,
                                      usage if include_usage else None, script)
        if script.midstream is not None:
            return _error(500)
        message: dict[str, Any] = {"role": "assistant", "content": text or None, "refusal": None}
        if calls:
            message["tool_calls"] = calls
        return web.json_response({
            "id": _random_id("chatcmpl-"), "object": "chat.completion", "created": int(time.time()),
            "model": body["model"], "system_fingerprint": None,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}],
            **({} if usage_off else {"usage": usage}),
        }, dumps=_dumps)

    @staticmethod
    def _script(messages: list[dict[str, Any]]) -> tuple[_Script, str, list[str] | None, bool]:
        """(script, echo text, tool results or None, usage off) for the conversation's end."""
        trailing_tools: list[str] = []
        for message in reversed(messages):
            if message["role"] != "tool":
                break
            trailing_tools.insert(0, _text(message.get("content")))
        looping = []
        for message in messages:
            if message["role"] == "user":
                _, directives = parse_directives(_text(message.get("content")), _DIRECTIVE_START)
                looping += [d for d in directives if d[0] == "tool_loop"]
        if trailing_tools:
            script = _Script.from_directives(looping)
            return script, "", trailing_tools, False
        last = next((m for m in reversed(messages) if m["role"] == "user"), None)
        echo, directives = parse_directives(_text(last.get("content")) if last else "", _DIRECTIVE_START)
        usage_off = ("usage", "off") in directives
        script = _Script.from_directives([d for d in directives if d[0] != "usage"])
        if not script.tools:
            script.tools = _Script.from_directives(looping).tools
        return script, echo, None, usage_off

    @staticmethod
    def _reply(echo: str, tool_results: list[str] | None, script: _Script) -> tuple[str, list[dict[str, Any]]]:
        if script.tools:
            calls = [
                {"id": _random_id("call_"), "type": "function", "function": {"name": name, "arguments": _dumps(args)}}
                for name, args in script.tools
            ]
            return script.text_before_tool or "", calls
        if script.reply is not None:
            return script.reply, []
        if tool_results is not None:
            return "Tool results: " + "".join(tool_results), []
        return "Echo: " + echo, []

    @staticmethod
    def _chunks(model: str, text: str, calls: list[dict[str, Any]], finish_reason: str, usage: dict | None,
                script: _Script) -> list[tuple[float, bytes]]:
        """The whole SSE stream as (sleep-before, bytes) pairs."""
        completion_id, created = _random_id("chatcmpl-"), int(time.time())

        def chunk(delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> bytes:
            data = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
                    "system_fingerprint": None,
                    "choices": [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None,
                                                          "finish_reason": finish}]}
            if usage is not None:
                data["usage"] = None
            data.update(extra)
            return f"data: {_dumps(data)}\n\n".encode()

        events = [(0.0, chunk({"role": "assistant", "content": "", "refusal": None}))]
        text_positions = []
        for i, piece in enumerate(_split_text(text, script.deltas)):
            text_positions.append(len(events))
            events.append((script.ttft if i == 0 else script.delay, chunk({"content": piece})))
        for index, call in enumerate(calls):
            events.append((0.0, chunk({"tool_calls": [{"index": index, "id": call["id"], "type": "function",
                                                        "function": {"name": call["function"]["name"], "arguments": ""}}]})))
            raw = call["function"]["arguments"]
            for start in range(0, len(raw), TOOL_JSON_CHUNK):
                events.append((0.0, chunk({"tool_calls": [{"index": index,
                                                            "function": {"arguments": raw[start:start + TOOL_JSON_CHUNK]}}]})))
        events.append((0.0, chunk({}, finish_reason)))
        if usage is not None:
            events.append((0.0, chunk(None, usage=usage)))
        if script.midstream is not None:
            error_type, after = script.midstream
            cut = text_positions[after - 1] + 1 if 0 < after <= len(text_positions) else len(events) - 1
            error = {"error": {"message": "The server had an error while processing your request.",
                               "type": error_type, "param": None, "code": None}}
            return events[:cut] + [(0.0, f"data: {_dumps(error)}\n\n".encode())]
        return events + [(0.0, b"data: [DONE]\n\n")]

    async def _stream(self, request: web.Request, model: str, text: str, calls: list[dict[str, Any]],
                      finish_reason: str, usage: dict | None, script: _Script) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream; charset=utf-8",
                                               "cache-control": "no-cache", "x-request-id": _random_id("req_")})
        try:
            await response.prepare(request)
            for pause, payload in self._chunks(model, text, calls, finish_reason, usage, script):
                if pause:
                    await asyncio.sleep(pause)
                await response.write(payload)
            await response.write_eof()
        except ConnectionResetError:
            pass
        return response


def make_app() -> web.Application:
    server = FakeOpenAIServer()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    for prefix in ("", "/v1"):
        app.router.add_post(f"{prefix}/chat/completions", server.chat_completions)
        app.router.add_get(f"{prefix}/models", server.models)
    app.router.add_get("/_fake/requests", server.list_requests)
    app.router.add_post("/_fake/reset", server.reset)
    app.router.add_get("/_fake/health", server.health)
    app.router.add_route("*", "/{tail:.*}", server.not_found)
    return app


def main() -> None:
    serve_main(make_app, "Fake OpenAI-compatible Chat Completions server", backlog=2048)


if __name__ == "__main__":
    main()
