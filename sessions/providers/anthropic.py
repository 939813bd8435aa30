"""Anthropic Messages API provider on the official SDK.

The SDK's own retries are off: a retry is only safe before any text reached the user, which only the
engine can know, so retry and fallback live here, around the stream.
"""

import json
import logging
import os
import random
import time
from functools import lru_cache
from typing import Callable

import anthropic
from django.conf import settings

from sessions.providers.base import Aborted, Completion, CompletionRequest, ProviderError
from sessions.providers.registry import register_provider

logger = logging.getLogger(__name__)

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


@lru_cache(maxsize=1)
def _client() -> anthropic.Anthropic:
    timeout = settings.BEAMCLAW["PROVIDER_TIMEOUT_SECONDS"]
    return anthropic.Anthropic(
        api_key=os.environ.get("ANTHROPIC_API_KEY"),
        max_retries=0,
        timeout=anthropic.Timeout(timeout, connect=10.0),
    )


def _base_url() -> str:
    return os.environ.get("ANTHROPIC_BASE_URL") or "https://api.anthropic.com"


def _classify(exc: Exception, model: str) -> ProviderError:
    if isinstance(exc, anthropic.APITimeoutError):
        return ProviderError(f"Anthropic API timed out: {exc}", kind="timeout", retryable=True)
    if isinstance(exc, anthropic.APIConnectionError):
        return ProviderError(
            f"Could not reach the Anthropic API at {_base_url()}: {exc}. Check network access or ANTHROPIC_BASE_URL.",
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
            "auth": f"Anthropic rejected the API key ({detail}). Set a valid ANTHROPIC_API_KEY for the workers.",
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
    def stream(
        self,
        request: CompletionRequest,
        *,
        on_text: Callable[[str], None],
        should_abort: Callable[[], bool],
    ) -> Completion:
        if not os.environ.get("ANTHROPIC_API_KEY"):
            raise ProviderError(
                "ANTHROPIC_API_KEY is not set for the workers. Export it and restart `python manage.py worker`.",
                kind="auth",
            )
        max_retries = settings.BEAMCLAW["PROVIDER_MAX_RETRIES"]
        base_delay = settings.BEAMCLAW["PROVIDER_RETRY_BASE_SECONDS"]
        models = (request.model, *request.fallbacks)
        last_error: ProviderError | None = None
        for model in models:
            for attempt in range(max_retries + 1):
                emitted = False

                def emit(text: str) -> None:
                    nonlocal emitted
                    emitted = True
                    on_text(text)

                try:
                    return self._stream_once(request, model, on_text=emit, should_abort=should_abort)
                except Aborted:
                    raise
                except Exception as exc:  # noqa: BLE001 - every SDK failure is classified below
                    error = exc if isinstance(exc, ProviderError) else _classify(exc, model)
                    if error.kind == "unknown":
                        logger.error("provider call to %s failed unexpectedly", model, exc_info=exc)
                    else:
                        logger.warning("provider call to %s failed (%s): %s", model, error.kind, error.message)
                    if emitted:
                        raise ProviderError(
                            f"{error.message} The reply broke off after it had started streaming.",
                            kind=error.kind,
                            status=error.status,
                        ) from exc
                    last_error = error
                    if not error.retryable or attempt == max_retries:
                        break
                    delay = base_delay * (2**attempt) * (0.5 + random.random())
                    logger.warning("provider %s (%s), retrying in %.2fs", error.kind, model, delay)
                    self._sleep(delay, should_abort)
            if last_error is not None and last_error.kind not in _RETRYABLE_KINDS | {"not_found"}:
                break
        assert last_error is not None
        if len(models) > 1:
            raise ProviderError(
                f"{last_error.message} (tried models: {', '.join(models)})",
                kind=last_error.kind,
                status=last_error.status,
            )
        raise last_error

    @staticmethod
    def _sleep(delay: float, should_abort: Callable[[], bool]) -> None:
        deadline = time.monotonic() + delay
        while (remaining := deadline - time.monotonic()) > 0:
            if should_abort():
                raise Aborted()
            time.sleep(min(remaining, 0.1))

    def _stream_once(
        self,
        request: CompletionRequest,
        model: str,
        *,
        on_text: Callable[[str], None],
        should_abort: Callable[[], bool],
    ) -> Completion:
        kwargs = {"model": model, "max_tokens": request.max_tokens, "messages": request.messages, "stream": True}
        if request.system:
            kwargs["system"] = request.system
        if request.stop_sequences:
            kwargs["stop_sequences"] = list(request.stop_sequences)
        if request.effort:
            kwargs["output_config"] = {"effort": request.effort}
        # The pinned SDK has no typed argument for the sampling knobs the Messages API still takes; its
        # documented way to send such fields is extra_body (a TypeError here once broke every request).
        sampling = {name: value for name, value in (("temperature", _temperature(request.temperature)),
                                                    ("top_p", request.top_p))
                    if value is not None}
        if sampling:
            kwargs["extra_body"] = sampling
        if request.tools:
            kwargs["tools"] = list(request.tools)

        blocks: list[dict] = []
        partial_json: dict[int, list[str]] = {}
        completion = Completion(content=blocks, stop_reason=None, model=model)
        # Raw events rather than the SDK's accumulating helper: it rebuilds a snapshot per event, which
        # costs more CPU than everything else here when hundreds of runs stream at once.
        with _client().messages.create(**kwargs) as stream:
            for event in stream:
                kind = event.type
                if kind == "content_block_delta":
                    delta = event.delta
                    if delta.type == "text_delta":
                        blocks[event.index]["text"] += delta.text
                        on_text(delta.text)
                    elif delta.type == "input_json_delta":
                        partial_json.setdefault(event.index, []).append(delta.partial_json)
                elif kind == "content_block_start":
                    block = event.content_block.model_dump(exclude_none=True)
                    if block["type"] == "text":
                        block["text"] = ""
                    blocks.append(block)
                elif kind == "content_block_stop":
                    pieces = partial_json.pop(event.index, None)
                    if pieces is not None:
                        blocks[event.index]["input"] = json.loads("".join(pieces) or "{}")
                elif kind == "message_start":
                    usage = event.message.usage
                    completion.input_tokens = usage.input_tokens or 0
                    completion.output_tokens = usage.output_tokens or 0
                    for name in ("cache_creation_input_tokens", "cache_read_input_tokens"):
                        if getattr(usage, name, None):
                            completion.extra_usage[name] = getattr(usage, name)
                elif kind == "message_delta":
                    completion.stop_reason = event.delta.stop_reason
                    if event.usage and event.usage.output_tokens is not None:
                        completion.output_tokens = event.usage.output_tokens
                if should_abort():
                    raise Aborted()
        return completion


register_provider("anthropic", AnthropicProvider, builtin=True)
