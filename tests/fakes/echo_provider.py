"""A second provider, registered the way an operator's plug-in is: name this module in
BEAMCLAW_PLUGINS. It streams the last user text back in two pieces, so a test can tell its
deltas and its reply from the (Anthropic) fake server's "Echo: ..." answers."""

from typing import Callable

from sessions.providers import register_provider
from sessions.providers.base import Completion, CompletionRequest


def halves(text: str) -> tuple[str, str]:
    middle = len(text) // 2
    return text[:middle], text[middle:]


class EchoProvider:
    def stream(
        self,
        request: CompletionRequest,
        *,
        on_text: Callable[[str], None],
        should_abort: Callable[[], bool],
    ) -> Completion:
        last_user = next(m for m in reversed(request.messages) if m["role"] == "user")
        text = "".join(b["text"] for b in last_user["content"] if b.get("type") == "text")
        for piece in halves(text):
            on_text(piece)
        return Completion(
            content=[{"type": "text", "text": text}], stop_reason="end_turn", model=f"echo/{request.model}",
            input_tokens=len(text.split()), output_tokens=len(text.split()),
        )


register_provider("echo", EchoProvider)
