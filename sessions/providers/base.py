"""What the run engine needs from an LLM provider: one streamed completion, with clear errors.

The canonical message format is Anthropic's Messages API, stated once here so that every provider maps
to the same thing:

- `CompletionRequest.messages` is the transcript as Messages API turns, `{"role": "user"|"assistant",
  "content": [block, ...]}`, roles alternating and the first turn the user's; blocks are Messages API
  content blocks (`text`, `image`, `tool_use`, `tool_result`, ...). `system` is plain text, `tools` are
  Messages API tool definitions (`name`, `description`, `input_schema`), and `tool_choice` is the Messages
  API's too (`{"type": "auto"|"any"|"tool"|"none", "name"?, "disable_parallel_tool_use"?}`; None: the
  provider's default, auto).
- `Completion.content` is the reply in the same blocks (what is stored in the transcript and what the
  tool loop reads `tool_use` from), and `Completion.stop_reason` is one of Anthropic's: "end_turn",
  "tool_use", "max_tokens", "stop_sequence" (None when the stream ended without one).
- Sampling values arrive as the client sent them, validated but not mapped: `temperature` on OpenAI's
  0..2 scale (the widest any edge accepts), `top_p` 0..1, penalties -2..2. A provider declares which of
  SAMPLING_PARAMS it takes (`Provider.sampling`); the edge refuses the others with a 400 before a run
  starts, so a provider never has to drop one silently or fail a run over it.
- `base_url` / `api_key` are the agent's own endpoint and key (empty: the deployment's, from the worker's
  environment). A tenant sets them, so a provider reaches a per-agent `base_url` only through the outbound
  address policy (beamclaw_project/infra/address_policy.py) and never logs the key.

A provider translates to and from its own API inside its module (sessions/providers/anthropic.py caps
temperature to Anthropic's 0..1, sessions/providers/openai.py maps blocks to Chat Completions messages);
nothing outside the module knows that API. A provider's `stream` makes one attempt on `request.model`:
retries and fallbacks (possibly to another provider) are sessions/providers/chain.py's. Providers are found
by name through sessions/providers/registry.py.
"""

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Callable, Protocol

from beamclaw_project.infra.draining import cut_on_drain

# The sampling parameters an edge may pass (run params, as sessions/chat.py stores them); `stop` arrives as
# CompletionRequest.stop_sequences and `max_tokens` is always sent (the agent's own cap at most).
SAMPLING_PARAMS = ("max_tokens", "temperature", "top_p", "stop", "effort", "seed", "presence_penalty", "frequency_penalty")


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


def reply_cut_on_drain(http_response) -> AbstractContextManager:
    """While a provider reads a streamed reply from `http_response` (an httpx.Response), a worker's drain
    (SIGTERM) shuts its connection down, so a model that is silent for a while cannot hold the step: the read
    fails at once, and the chain turns that failure into `Aborted` since `should_abort` is true."""
    try:
        sock = http_response.extensions["network_stream"].get_extra_info("socket")
    except (AttributeError, KeyError):
        sock = None
    return cut_on_drain(sock)


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
    temperature: float | None = None
    top_p: float | None = None
    stop_sequences: tuple[str, ...] = ()
    effort: str | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    tools: tuple[dict, ...] = ()
    tool_choice: dict | None = None
    base_url: str = ""
    api_key: str = field(default="", repr=False)
    # Nobody reads the reply as it comes (a plain chat completion, a cron occurrence, a sub-agent, and no
    # one following the run): a provider may ask its API for the reply whole, and hand its text to
    # `on_text` once. A provider that streams anyway is just as right.
    whole_reply: bool = False


def request_sampling(params: dict) -> dict:
    """CompletionRequest's sampling arguments from a run's params (as sessions/chat.py stores them)."""
    return {
        "temperature": params.get("temperature"),
        "top_p": params.get("top_p"),
        "stop_sequences": tuple(params.get("stop") or ()),
        "effort": params.get("effort"),
        "seed": params.get("seed"),
        "presence_penalty": params.get("presence_penalty"),
        "frequency_penalty": params.get("frequency_penalty"),
    }


class Provider(Protocol):
    """One reply per `stream` call, one attempt on `request.model`. `on_text` gets each piece of reply text
    as it arrives (the engine publishes it at once, so it cannot be taken back: the chain retries only
    before the first piece); `should_abort` is polled between stream events, and `Aborted` raised once it is
    true. Failures are `ProviderError`s. A provider that asks its API for a `whole_reply` has no events to
    poll between: its connection's reads, the wait for the response's headers included, must be ones a drain
    and an abort can cut (sessions/providers/endpoints.py, `reads_made_cuttable`), and it polls
    `should_abort` once it has the reply.

    `sampling` names the SAMPLING_PARAMS the provider takes; a provider without the attribute (an older
    plug-in) is taken to accept them all."""

    sampling: frozenset[str]

    def stream(
        self,
        request: CompletionRequest,
        *,
        on_text: Callable[[str], None],
        should_abort: Callable[[], bool],
    ) -> Completion: ...
