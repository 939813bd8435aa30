"""Anthropic Messages API provider on the official SDK: one attempt per call, streamed unless nobody reads
the reply as it comes (`CompletionRequest.whole_reply`).

The SDK's own retries are off: a retry is only safe before any text reached the user, which only the
engine can know, so retries and fallbacks live in sessions/providers/chain.py, around the stream. An agent
may bring its own key (`api_key`); the endpoint is always the deployment's (ANTHROPIC_BASE_URL): the SDK
takes only its own HTTP client, which the outbound address policy does not provide, so a tenant's
`base_url` could not be checked on every request and is refused instead.
"""

import json
import os
import urllib.request
from contextlib import contextmanager, nullcontext, suppress
from functools import lru_cache
from typing import Callable, Iterator

import anthropic
import httpx2

from sessions.providers import endpoints
from sessions.providers.base import Aborted, Completion, CompletionRequest, ProviderError, reply_cut_on_drain
from sessions.providers.http1 import Http1Transport
from sessions.providers.registry import register_provider

# The longest reply asked for whole: it comes in one read once the model has written all of it, and the SDK
# refuses longer ones unstreamed for some models. A longer one is streamed, as any other.
WHOLE_REPLY_MAX_TOKENS = 8192
_EXTRA_USAGE = ("cache_creation_input_tokens", "cache_read_input_tokens")
_RETRYABLE_KINDS = {"overloaded", "rate_limited", "server_error", "connection", "timeout"}
_KIND_BY_ERROR_TYPE = {
    "overloaded_error": "overloaded",
    "rate_limit_error": "rate_limited",
    "api_error": "server_error",
    "authentication_error": "auth",
    "permission_error": "permission",
    "not_found_error": "not_found",
    "invalid_request_error": "bad_request",
    "request_too_large": "bad_request",
}


@lru_cache(maxsize=endpoints.CLIENT_CACHE_SIZE)
def sdk_client(api_key: str) -> tuple[anthropic.Anthropic, bool]:
    """One client per key (the SDK reads ANTHROPIC_BASE_URL itself), and whether a drain or an abort can cut
    its reads (every read: a whole reply's wait for its headers too)."""
    timeout = anthropic.Timeout(endpoints.timeout_seconds(), connect=endpoints.CONNECT_TIMEOUT_SECONDS)
    client = anthropic.Anthropic(api_key=api_key, max_retries=0, timeout=timeout, http_client=_http_client(timeout))
    return client, endpoints.reads_made_cuttable(client._client)


def _http_client(timeout: anthropic.Timeout) -> anthropic.DefaultHttpxClient | None:
    """The SDK's HTTP client on our HTTP/1.1 transport (sessions/providers/http1.py: a streamed event costs a
    fraction of httpx2's own), or None, the SDK's own client, when the environment names a proxy: httpx2's
    transport takes the proxy settings, ours does not speak to proxies."""
    if any(scheme != "no" for scheme in urllib.request.getproxies()):  # ("no": NO_PROXY alone, no proxy)
        return None
    return anthropic.DefaultHttpxClient(transport=Http1Transport(), timeout=timeout)


def warm_up() -> None:
    """The deployment key's client, built before the first step needs it (its SSL context alone takes
    ~50 ms), and OpenTelemetry's propagation, which the SDK imports at its first traced call (~7 ms)."""
    if api_key := os.environ.get("ANTHROPIC_API_KEY"):
        sdk_client(api_key)
    with suppress(ImportError):
        import opentelemetry.propagate  # noqa: F401


def _base_url() -> str:
    return os.environ.get("ANTHROPIC_BASE_URL") or "https://api.anthropic.com"


def _classify(exc: Exception, request: CompletionRequest) -> ProviderError:
    model = request.model
    key_hint = "the agent's api_key" if request.api_key else "a valid ANTHROPIC_API_KEY for the workers"
    if isinstance(exc, anthropic.APITimeoutError):
        return ProviderError(f"Anthropic API timed out: {exc}", kind="timeout", retryable=True)
    if isinstance(exc, httpx2.TimeoutException):  # a read of the reply's body, after create() returned
        return ProviderError(f"Anthropic API timed out while sending the reply: {exc}", kind="timeout",
                             retryable=True)
    if isinstance(exc, (anthropic.APIConnectionError, httpx2.TransportError)):
        # The SDK's own message is only "Connection error."; what went wrong is its cause.
        detail = str(exc).rstrip(".")
        if exc.__cause__ is not None and str(exc.__cause__):
            detail = f"{detail} ({str(exc.__cause__).rstrip('.')})"
        return ProviderError(
            f"Could not reach the Anthropic API at {_base_url()}: {detail}. Check network access or ANTHROPIC_BASE_URL.",
            kind="connection",
            retryable=True,
        )
    if isinstance(exc, anthropic.APIStatusError):
        body = exc.body if isinstance(exc.body, dict) else {}
        error = body.get("error") if isinstance(body.get("error"), dict) else {}
        detail = error.get("message") or str(exc)
        status = exc.status_code
        kind = _KIND_BY_ERROR_TYPE.get(error.get("type", ""))
        if kind is None:
            kind = {401: "auth", 403: "permission", 404: "not_found", 429: "rate_limited", 529: "overloaded"}.get(
                status, "server_error" if status >= 500 else "bad_request"
            )
        messages = {
            "auth": f"Anthropic rejected the API key ({detail}). Set {key_hint}.",
            "permission": f"The Anthropic API key may not use this resource ({detail}).",
            "not_found": f"Model '{model}' was not found by Anthropic ({detail}). Set the agent's model to a valid model id.",
            "rate_limited": f"Anthropic rate limit reached ({detail}).",
            "overloaded": f"Anthropic is overloaded ({detail}).",
            "server_error": f"Anthropic API error ({detail}).",
            "bad_request": f"Anthropic refused the request ({detail}).",
        }
        return ProviderError(messages[kind], kind=kind, retryable=kind in _RETRYABLE_KINDS, status=status)
    return ProviderError(f"Unexpected provider error: {exc!r}", kind="unknown")


def _temperature(value: float | None) -> float | None:
    # The request carries OpenAI's 0..2 scale, Anthropic's is 0..1: both mean "deterministic" at 0, and
    # everything above 1 is already Anthropic's most random setting.
    return None if value is None else min(value, 1.0)


class AnthropicProvider:
    sampling = frozenset({"max_tokens", "temperature", "top_p", "stop", "effort"})

    def stream(
        self,
        request: CompletionRequest,
        *,
        on_text: Callable[[str], None],
        should_abort: Callable[[], bool],
    ) -> Completion:
        if request.base_url:
            raise ProviderError(
                "The anthropic provider does not take a per-agent base_url (it always uses the deployment's "
                "ANTHROPIC_BASE_URL). Clear the agent's base_url.",
                kind="bad_request",
            )
        api_key = request.api_key or os.environ.get("ANTHROPIC_API_KEY")
        if not api_key:
            raise ProviderError(
                "ANTHROPIC_API_KEY is not set for the workers. Export it and restart `python manage.py worker`, "
                "or set the agent's api_key.",
                kind="auth",
            )
        try:
            client, cuttable = sdk_client(api_key)
            if request.whole_reply and cuttable and request.max_tokens <= WHOLE_REPLY_MAX_TOKENS:
                return self._whole_once(request, client, on_text=on_text, should_abort=should_abort)
            return self._stream_once(request, client, cuttable, on_text=on_text, should_abort=should_abort)
        except (Aborted, ProviderError):
            raise
        except Exception as exc:  # noqa: BLE001 - every SDK failure is classified
            raise _classify(exc, request) from exc

    def _whole_once(
        self,
        request: CompletionRequest,
        client: anthropic.Anthropic,
        *,
        on_text: Callable[[str], None],
        should_abort: Callable[[], bool],
    ) -> Completion:
        """The reply asked for whole: one JSON body to read, where a stream is an event per token (a real
        model sends one every 10-20 ms, each a network read and a parse here)."""
        # (A drain or an abort cuts the wait: sdk_client's reads.)
        with _messages_post(client, request, stream=False) as response:
            body = json.loads(response.read())
        if should_abort():
            raise Aborted()
        usage = body.get("usage") or {}
        completion = Completion(
            content=[_without_nulls(block) for block in body.get("content") or ()],
            stop_reason=body.get("stop_reason"),
            model=request.model,
            input_tokens=usage.get("input_tokens") or 0,
            output_tokens=usage.get("output_tokens") or 0,
            extra_usage={name: usage[name] for name in _EXTRA_USAGE if usage.get(name)},
        )
        if text := completion.text:
            on_text(text)
        return completion

    def _stream_once(
        self,
        request: CompletionRequest,
        client: anthropic.Anthropic,
        cuttable: bool,
        *,
        on_text: Callable[[str], None],
        should_abort: Callable[[], bool],
    ) -> Completion:
        completion = Completion(content=[], stop_reason=None, model=request.model)
        partial_json: dict[int, list[str]] = {}
        # The stream's events as plain JSON rather than the SDK's models: building a pydantic model per
        # event, and snapshots in its accumulating helper, cost more CPU than everything else here when
        # hundreds of runs stream at once. The SDK still sends the request and raises for error statuses.
        # A drain cuts the stream's reads: every read of sdk_client's connections, or (when those could not be
        # made cuttable) those of this response.
        with _messages_post(client, request, stream=True) as response, \
                nullcontext() if cuttable else reply_cut_on_drain(response):
            for batch in _sse_batches(response):
                # Text deltas that arrived in one network read go on as one: the model wrote them while
                # this worker was busy, so joining them delays nothing, and each costs a Redis append here
                # and a read and a chunk at every client.
                text: list[str] = []
                for event in batch:
                    delta = event.get("delta") or {}
                    if event["type"] == "content_block_delta" and delta.get("type") == "text_delta":
                        completion.content[event["index"]]["text"] += delta["text"]
                        text.append(delta["text"])
                        continue
                    if text:
                        on_text("".join(text))
                        text = []
                    _apply_event(event, completion, partial_json)
                if text:
                    on_text("".join(text))
                if should_abort():
                    raise Aborted()
        return completion


@contextmanager
def _messages_post(client: anthropic.Anthropic, request: CompletionRequest, *, stream: bool) -> Iterator[httpx2.Response]:
    """POST /v1/messages through the SDK (its headers, key, timeouts, and APIStatusError for an error status),
    yielding the response with its body still to read. The body goes as JSON we encode: the SDK's typed
    create() copies every node of the request first (its prepare step, ~0.2 ms a call for the default agent's
    7 KB of tool definitions), for request shapes that are plain JSON here already."""
    body = _BODY_ENCODER.encode(_request_body(request, stream=stream)).encode()
    # (The client's default headers say the body is JSON. The SDK's stream leaves the body unread; it is
    # not iterated.)
    with client.post("/v1/messages", cast_to=object, content=body, stream=True,
                     stream_cls=anthropic.Stream[object]) as sdk_stream:
        yield sdk_stream.response


# As the SDK encodes a body: UTF-8, compact, and no NaN (invalid JSON).
_BODY_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _request_body(request: CompletionRequest, *, stream: bool) -> dict:
    """The Messages API request's body."""
    body = {"model": request.model, "max_tokens": request.max_tokens, "messages": request.messages, "stream": stream}
    if request.system:
        body["system"] = request.system
    if request.stop_sequences:
        body["stop_sequences"] = list(request.stop_sequences)
    if request.effort:
        body["output_config"] = {"effort": request.effort}
    if (temperature := _temperature(request.temperature)) is not None:
        body["temperature"] = temperature
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.tools:
        body["tools"] = request.tools
        if request.tool_choice:
            body["tool_choice"] = request.tool_choice
    return body


def _apply_event(event: dict, completion: Completion, partial_json: dict[int, list[str]]) -> None:
    """Record a stream event other than a text delta: a content block starting or ending (a tool_use's input
    arrives in JSON pieces, joined at its end), the usage, the stop reason."""
    kind, blocks = event["type"], completion.content
    if kind == "content_block_delta":
        if event["delta"]["type"] == "input_json_delta":
            partial_json.setdefault(event["index"], []).append(event["delta"]["partial_json"])
    elif kind == "content_block_start":
        block = _without_nulls(event["content_block"])
        if block["type"] == "text":
            block["text"] = ""
        blocks.append(block)
    elif kind == "content_block_stop":
        pieces = partial_json.pop(event["index"], None)
        if pieces is not None:
            blocks[event["index"]]["input"] = json.loads("".join(pieces) or "{}")
    elif kind == "message_start":
        usage = event["message"].get("usage") or {}
        completion.input_tokens = usage.get("input_tokens") or 0
        completion.output_tokens = usage.get("output_tokens") or 0
        for name in _EXTRA_USAGE:
            if usage.get(name):
                completion.extra_usage[name] = usage[name]
    elif kind == "message_delta":
        completion.stop_reason = event["delta"].get("stop_reason")
        output_tokens = (event.get("usage") or {}).get("output_tokens")
        if output_tokens is not None:
            completion.output_tokens = output_tokens


def _sse_batches(response: httpx2.Response) -> Iterator[list[dict]]:
    """The stream's server-sent events, as the JSON object each carries, in batches: the events completed by
    one network read. Pings are skipped; an `error` event raises APIStatusError, as the SDK's own stream does."""
    buffer = b""
    for chunk in response.iter_bytes():
        # Events end with a blank line; the Messages API ends lines with \n, the SSE format allows \r\n.
        buffer = (buffer + chunk).replace(b"\r\n", b"\n")
        *complete, buffer = buffer.split(b"\n\n")
        batch = []
        for block in complete:
            try:
                event = _sse_event(block, response)
            except anthropic.APIStatusError:
                # The events before the error came first: their text is the user's before the error is.
                if batch:
                    yield batch
                raise
            if event is not None:
                batch.append(event)
        if batch:
            yield batch


def _sse_event(block: bytes, response) -> dict | None:
    name, data = None, []
    for line in block.decode().split("\n"):
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            name = value
        elif field == "data":
            data.append(value)
    if not data or name == "ping":
        return None
    body = json.loads("\n".join(data))
    if name == "error":
        raise anthropic.APIStatusError(f"{body}", response=response, body=body)
    return body


def _without_nulls(value):
    """What the SDK's model_dump(exclude_none=True) gave for a content block."""
    if isinstance(value, dict):
        return {key: _without_nulls(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [_without_nulls(item) for item in value]
    return value


register_provider("anthropic", AnthropicProvider, builtin=True)
