"""OpenAI-compatible Chat Completions provider (OpenAI, vLLM, Ollama, LM Studio, LiteLLM, llama.cpp server)
on the official `openai` SDK: one streamed attempt per call, translated to and from the canonical
Messages API blocks (sessions/providers/base.py).

Where it goes: the agent's `base_url` and `api_key` when set, else the workers' OPENAI_BASE_URL and
OPENAI_API_KEY (the operator's, trusted, so a local server is fine there). An agent's base_url is a
tenant's and is reached only through the outbound address policy, checked on every request
(sessions/providers/endpoints.py); the deployment's key is never sent to it.

Translation, both ways:
- system → a leading "system" message; a user turn's text and images → one "user" message (plain text
  when it is only text, which every server takes); its tool_result blocks → "tool" messages with
  `tool_call_id`, placed first, right after the assistant message that asked for them;
- an assistant turn → one "assistant" message, text as `content` and tool_use blocks as `tool_calls`
  (arguments as a JSON string); tool definitions → `{"type": "function", "function": {name, description,
  parameters}}`;
- streamed deltas → a text block plus tool_use blocks (argument fragments joined per call index, then
  parsed); finish_reason → stop_reason (stop → end_turn, tool_calls → tool_use, length → max_tokens);
  usage from the final chunk (asked for with stream_options.include_usage; servers that do not send it
  leave the counts at 0).
"""

import json
import os
import secrets
from functools import lru_cache
from typing import Callable
from urllib.parse import urlsplit

import openai

from beamclaw_project.infra.address_policy import OutboundError
from sessions.providers import endpoints
from sessions.providers.base import Aborted, Completion, CompletionRequest, ProviderError, reply_cut_on_drain
from sessions.providers.registry import register_provider

DEFAULT_BASE_URL = "https://api.openai.com/v1"
# Local servers need no key, but the SDK must send one: this is what it sends then.
NO_KEY = "none"
_STOP_REASONS = {"stop": "end_turn", "tool_calls": "tool_use", "function_call": "tool_use", "length": "max_tokens",
                 "content_filter": "refusal"}
_RETRYABLE_KINDS = {"rate_limited", "server_error", "connection", "timeout"}


@lru_cache(maxsize=endpoints.CLIENT_CACHE_SIZE)
def _client(base_url: str, api_key: str, checked: bool) -> openai.OpenAI:
    """One client per (endpoint, key); `checked` ones send every request through the address policy."""
    return openai.OpenAI(
        base_url=base_url, api_key=api_key, max_retries=0,
        timeout=openai.Timeout(endpoints.timeout_seconds(), connect=endpoints.CONNECT_TIMEOUT_SECONDS),
        http_client=endpoints.checked_http_client() if checked else None,
    )


def _is_openai_itself(base_url: str) -> bool:
    return urlsplit(base_url).hostname == "api.openai.com"


def _endpoint(request: CompletionRequest) -> tuple[str, str, bool]:
    """(base_url, key, checked by the address policy)."""
    if request.base_url:
        return request.base_url, request.api_key or NO_KEY, True
    base_url = os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
    api_key = request.api_key or os.environ.get("OPENAI_API_KEY") or ""
    if not api_key:
        if base_url == DEFAULT_BASE_URL:
            raise ProviderError(
                "OPENAI_API_KEY is not set for the workers. Export it (or OPENAI_BASE_URL for a local server) and "
                "restart `python manage.py worker`, or set the agent's api_key.",
                kind="auth",
            )
        api_key = NO_KEY
    return base_url, api_key, False


# --------------------------------------------------------------------------- canonical → Chat Completions


def _text(content) -> str:
    if isinstance(content, str):
        return content
    return "\n".join(b.get("text", "") for b in content or () if isinstance(b, dict) and b.get("type") == "text")


def _image_part(block: dict) -> dict | None:
    source = block.get("source") or {}
    if source.get("type") == "base64":
        return {"type": "image_url", "image_url": {"url": f"data:{source.get('media_type')};base64,{source.get('data')}"}}
    if source.get("type") == "url":
        return {"type": "image_url", "image_url": {"url": source.get("url")}}
    return None


def _user_messages(content) -> list[dict]:
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    messages: list[dict] = []
    parts: list[dict] = []
    for block in content:
        kind = block.get("type")
        if kind == "tool_result":
            text = _text(block.get("content")) or "(no output)"
            if block.get("is_error"):
                text = f"Error: {text}"
            messages.append({"role": "tool", "tool_call_id": block.get("tool_use_id"), "content": text})
        elif kind == "text":
            parts.append({"type": "text", "text": block.get("text", "")})
        elif kind == "image" and (part := _image_part(block)) is not None:
            parts.append(part)
    if parts:
        only_text = all(p["type"] == "text" for p in parts)
        messages.append({"role": "user", "content": "\n".join(p["text"] for p in parts) if only_text else parts})
    return messages


def _assistant_message(content) -> dict:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    text = _text(content)
    calls = [
        {"id": b.get("id"), "type": "function",
         "function": {"name": b.get("name"), "arguments": json.dumps(b.get("input") or {}, ensure_ascii=False)}}
        for b in content if b.get("type") == "tool_use"
    ]
    message: dict = {"role": "assistant", "content": text or None}
    if calls:
        message["tool_calls"] = calls
    return message


def chat_messages(system: str, messages: list[dict]) -> list[dict]:
    """The canonical transcript as Chat Completions messages."""
    out: list[dict] = [{"role": "system", "content": system}] if system else []
    for message in messages:
        if message["role"] == "assistant":
            out.append(_assistant_message(message["content"]))
        else:
            out.extend(_user_messages(message["content"]))
    return out


def chat_tools(tools) -> list[dict]:
    return [
        {"type": "function", "function": {
            "name": tool["name"], "description": tool.get("description", ""),
            "parameters": tool.get("input_schema") or {"type": "object", "properties": {}},
        }}
        for tool in tools
    ]


def _request_kwargs(request: CompletionRequest, base_url: str) -> dict:
    kwargs: dict = {
        "model": request.model,
        "messages": chat_messages(request.system, request.messages),
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    # OpenAI itself deprecated max_tokens (its reasoning models refuse it); the servers that mimic it all
    # take max_tokens, and not all of them max_completion_tokens yet.
    kwargs["max_completion_tokens" if _is_openai_itself(base_url) else "max_tokens"] = request.max_tokens
    for name in ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty"):
        value = getattr(request, name)
        if value is not None:
            kwargs[name] = value
    if request.stop_sequences:
        kwargs["stop"] = list(request.stop_sequences)
    if request.effort:
        kwargs["reasoning_effort"] = request.effort
    if request.tools:
        kwargs["tools"] = chat_tools(request.tools)
        kwargs.update(_tool_choice(request.tool_choice))
    return kwargs


def _tool_choice(choice: dict | None) -> dict:
    """The Messages API's tool_choice as Chat Completions' tool_choice and parallel_tool_calls."""
    if not choice:
        return {}
    kind = choice.get("type")
    kwargs: dict = {}
    if kind == "tool":
        kwargs["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    elif kind in ("any", "none", "auto"):
        kwargs["tool_choice"] = {"any": "required"}.get(kind, kind)
    if choice.get("disable_parallel_tool_use"):
        kwargs["parallel_tool_calls"] = False
    return kwargs


# --------------------------------------------------------------------------- errors


def _classify(exc: Exception, request: CompletionRequest, base_url: str) -> ProviderError:
    where = f"the OpenAI-compatible server at {base_url}"
    where_cap = where[0].upper() + where[1:]
    url_setting = "the agent's base_url" if request.base_url else "OPENAI_BASE_URL"
    key_setting = "the agent's api_key" if request.api_key else "OPENAI_API_KEY for the workers"
    if isinstance(exc, openai.APITimeoutError):
        return ProviderError(f"{where_cap} timed out.", kind="timeout", retryable=True)
    if isinstance(exc, openai.APIConnectionError):
        return ProviderError(
            f"Could not reach {where}: {exc.__cause__ or exc}. Check that it is running and {url_setting}.",
            kind="connection", retryable=True,
        )
    if isinstance(exc, openai.APIStatusError):
        body = exc.body if isinstance(exc.body, dict) else {}
        error = body.get("error") if isinstance(body.get("error"), dict) else body
        detail = (error.get("message") if isinstance(error, dict) else None) or exc.message
        status = exc.status_code
        code = error.get("code") if isinstance(error, dict) else None
        kind = {401: "auth", 403: "permission", 404: "not_found", 429: "rate_limited"}.get(
            status, "server_error" if status >= 500 else "bad_request"
        )
        if code == "insufficient_quota":
            kind = "quota"
        messages = {
            "auth": f"{where_cap} rejected the API key ({detail}). Set a valid {key_setting}.",
            "permission": f"The API key may not use this resource at {where} ({detail}).",
            "not_found": f"Model '{request.model}' was not found at {where} ({detail}). Set the agent's model to a "
                         f"model the server serves; if no model is found, check that {url_setting} ends in /v1.",
            "rate_limited": f"Rate limit reached at {where} ({detail}).",
            "quota": f"The account behind the key has no quota left at {where} ({detail}).",
            "server_error": f"{where_cap} failed ({detail}).",
            "bad_request": f"{where_cap} refused the request ({detail}).",
        }
        return ProviderError(messages[kind], kind=kind, retryable=kind in _RETRYABLE_KINDS, status=status)
    if isinstance(exc, openai.APIError):
        # An error event inside the stream (the server failed after it had answered 200).
        return ProviderError(f"{where_cap} failed while streaming ({exc.message}).", kind="server_error", retryable=True)
    return ProviderError(f"Unexpected provider error: {exc!r}", kind="unknown")


# --------------------------------------------------------------------------- the provider


class OpenAIProvider:
    sampling = frozenset({"max_tokens", "temperature", "top_p", "stop", "effort", "seed", "presence_penalty",
                          "frequency_penalty"})

    def stream(
        self,
        request: CompletionRequest,
        *,
        on_text: Callable[[str], None],
        should_abort: Callable[[], bool],
    ) -> Completion:
        base_url, api_key, checked = _endpoint(request)
        try:
            return self._stream_once(request, base_url, _client(base_url, api_key, checked),
                                     on_text=on_text, should_abort=should_abort)
        except (Aborted, ProviderError):
            raise
        except OutboundError as exc:
            raise endpoints.endpoint_refused(exc, base_url) from exc
        except Exception as exc:  # noqa: BLE001 - every SDK failure is classified
            raise _classify(exc, request, base_url) from exc

    def _stream_once(
        self,
        request: CompletionRequest,
        base_url: str,
        client: openai.OpenAI,
        *,
        on_text: Callable[[str], None],
        should_abort: Callable[[], bool],
    ) -> Completion:
        text: list[str] = []
        calls: dict[int, dict] = {}  # index → {"id", "name", "arguments": [fragments]}
        completion = Completion(content=[], stop_reason=None, model=request.model)
        finish_reason = None
        with client.chat.completions.create(**_request_kwargs(request, base_url)) as stream, \
                reply_cut_on_drain(stream.response):
            for chunk in stream:
                if chunk.usage is not None:
                    completion.input_tokens = chunk.usage.prompt_tokens or 0
                    completion.output_tokens = chunk.usage.completion_tokens or 0
                    cached = getattr(chunk.usage.prompt_tokens_details, "cached_tokens", None)
                    if cached:
                        completion.extra_usage["cache_read_input_tokens"] = cached
                for choice in chunk.choices[:1]:
                    delta = choice.delta
                    if delta is not None and delta.content:
                        text.append(delta.content)
                        on_text(delta.content)
                    for call in (delta.tool_calls if delta is not None else None) or ():
                        slot = calls.setdefault(call.index, {"id": None, "name": "", "arguments": []})
                        if call.id:
                            slot["id"] = call.id
                        if call.function is not None:
                            if call.function.name:
                                slot["name"] += call.function.name
                            if call.function.arguments:
                                slot["arguments"].append(call.function.arguments)
                    if choice.finish_reason:
                        finish_reason = choice.finish_reason
                if should_abort():
                    raise Aborted()
        if text:
            completion.content.append({"type": "text", "text": "".join(text)})
        for index in sorted(calls):
            completion.content.append(self._tool_use(calls[index], request, base_url))
        completion.stop_reason = "tool_use" if calls else _STOP_REASONS.get(finish_reason, finish_reason)
        return completion

    @staticmethod
    def _tool_use(call: dict, request: CompletionRequest, base_url: str) -> dict:
        raw = "".join(call["arguments"])
        try:
            tool_input = json.loads(raw or "{}")
        except ValueError:
            tool_input = None
        if not call["name"] or not isinstance(tool_input, dict):
            raise ProviderError(
                f"Model '{request.model}' at {base_url} asked for tool {call['name'] or '(unnamed)'!r} with "
                f"arguments that are not a JSON object ({raw[:200]!r}). Use a model that supports tool calling.",
                kind="bad_response",
            )
        # Some servers (older Ollama) send no call id; the transcript needs one to pair the result.
        return {"type": "tool_use", "id": call["id"] or f"call_{secrets.token_hex(12)}", "name": call["name"],
                "input": tool_input}


register_provider("openai", OpenAIProvider, builtin=True)
