"""A reply asked for whole (a run nobody streams) is the reply the stream would have given: the same blocks,
stop reason and usage, its text handed on once."""

import uuid
from dataclasses import replace

import pytest

from sessions.providers.anthropic import AnthropicProvider
from sessions.providers.base import CompletionRequest


def _without_ids(blocks: list[dict]) -> list[dict]:
    # The fake gives each tool_use an id of its own per request.
    return [{key: value for key, value in block.items() if key != "id"} for block in blocks]


@pytest.mark.parametrize("directives", [
    "[[deltas=4]]",
    '[[text_before_tool=Let me look.]] [[tool=get_weather:{"city": "Paris", "days": [1, 2]}]]',
])
def test_a_whole_reply_is_the_reply_the_stream_gives(fake_llm, monkeypatch, directives):
    monkeypatch.setenv("ANTHROPIC_BASE_URL", fake_llm)
    request = CompletionRequest(
        model="claude-test", system="Be brief.", max_tokens=200,
        messages=[{"role": "user", "content": [{"type": "text", "text": f"the same reply {directives}"}]}],
        # A key of its own: the provider keeps a client per key, built with the base URL of its time.
        api_key=f"whole-reply-{uuid.uuid4().hex}",
    )

    def ask(whole_reply: bool):
        texts: list[str] = []
        completion = AnthropicProvider().stream(replace(request, whole_reply=whole_reply),
                                                on_text=texts.append, should_abort=lambda: False)
        return completion, texts

    whole, whole_texts = ask(True)
    streamed, streamed_texts = ask(False)
    assert _without_ids(whole.content) == _without_ids(streamed.content)
    assert (whole.stop_reason, whole.usage, whole.text) == (streamed.stop_reason, streamed.usage, streamed.text)
    assert whole_texts == ["".join(streamed_texts)], "the text handed on once"
