"""What the run engine needs from an LLM provider: one streamed completion, with clear errors."""

from dataclasses import dataclass, field
from typing import Callable, Protocol


class ProviderError(Exception):
    """A provider call failed. `retryable` errors (overload, rate limit, 5xx, network) may be retried
    as long as nothing was streamed yet; the others (bad key, unknown model, bad request) may not."""

    def __init__(self, message: str, *, kind: str, retryable: bool = False, status: int | None = None):
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.retryable = retryable
        self.status = status


class Aborted(Exception):
    """The run was aborted while its step was streaming."""


@dataclass
class Completion:
    content: list[dict]
    stop_reason: str | None
    model: str
    input_tokens: int = 0
    output_tokens: int = 0
    extra_usage: dict = field(default_factory=dict)

    @property
    def text(self) -> str:
        return "".join(b.get("text", "") for b in self.content if b.get("type") == "text")

    @property
    def usage(self) -> dict:
        return {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens, **self.extra_usage}


@dataclass(frozen=True)
class CompletionRequest:
    model: str
    system: str
    messages: list[dict]
    max_tokens: int
    fallbacks: tuple[str, ...] = ()
    temperature: float | None = None
    top_p: float | None = None
    stop_sequences: tuple[str, ...] = ()
    effort: str | None = None
    tools: tuple[dict, ...] = ()


class Provider(Protocol):
    def stream(
        self,
        request: CompletionRequest,
        *,
        on_text: Callable[[str], None],
        should_abort: Callable[[], bool],
    ) -> Completion: ...
