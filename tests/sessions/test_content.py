"""One content check for every edge (sessions/content.py): the OpenAI API, REST and the WebSocket refuse the
same messages, naming the same part."""

import httpx
import pytest

from sessions.content import MAX_TEXT_CHARS, ContentInvalid, content_parse
from sessions.models import AgentSession
from tests.sessions.test_websocket import WS


def test_strings_and_parts_of_both_dialects_become_blocks():
    assert content_parse("hi") == [{"type": "text", "text": "hi"}]
    parts = [
        {"type": "text", "text": "look", "extra": 1},
        {"type": "text", "text": "  "},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
    ]
    assert content_parse(parts) == [
        {"type": "text", "text": "look"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
    ]
    assert content_parse(None, allow_empty=True) == [] and content_parse("", allow_empty=True) == []


@pytest.mark.parametrize(
    "value, names",
    [
        ([{"type": "text"}], "content[1].text must be a string"),
        ([{"type": "image", "source": {}}], "content[1].source must be"),
        ([{"type": "image", "source": {"type": "url", "url": "file:///etc/passwd"}}], "content[1].source must be"),
        ([{"type": "image_url", "image_url": {"url": "ftp://x"}}], "content[1].image_url.url must be an http(s) URL"),
    ],
)
def test_a_bad_part_is_named(value, names):
    with pytest.raises(ContentInvalid) as refused:
        content_parse([{"type": "text", "text": "fine"}, *value])
    assert names in refused.value.message and refused.value.field == "content[1]"


BAD = {
    "text block without text": ([{"type": "text"}], "[0].text must be a string."),
    "unknown block type": ([{"type": "video"}], "[0].type 'video' is not supported"),
    "empty list": ([], None),
    "non-string text": ([{"type": "text", "text": 5}], "[0].text must be a string."),
    "too long": ("x" * (MAX_TEXT_CHARS + 1), f" has {MAX_TEXT_CHARS + 1} characters of text; at most {MAX_TEXT_CHARS}"),
}


@pytest.fixture
def session_id(live, tenant) -> str:
    return str(AgentSession.objects.create(tenant=tenant.tenant, agent=tenant.agent, key="agent:assistant:content").pk)


@pytest.fixture
def websocket(live, tenant):
    client = WS(live, tenant.api_key)
    yield client
    client.close()


@pytest.mark.parametrize("case", BAD)
def test_every_edge_refuses_the_same_content_naming_the_same_part(live, tenant, session_id, websocket, case):
    content, names = BAD[case]
    openai = httpx.post(
        f"{live}/v1/chat/completions", headers=tenant.headers, timeout=30,
        json={"model": "assistant", "messages": [{"role": "user", "content": content}]},
    )
    rest = httpx.post(
        f"{live}/api/sessions/{session_id}/messages/", headers=tenant.headers, timeout=30, json={"content": content}
    )
    ws = websocket.call("chat.send", {"session": session_id, "message": content})

    assert openai.status_code == 400, openai.text
    assert rest.status_code == 400 and "content" in rest.json(), rest.text
    assert ws["ok"] is False and ws["error"]["code"] == "invalid_params", ws
    if names is not None:
        assert f"messages[0].content{names}" in openai.json()["error"]["message"]
        assert f"content{names}" in rest.json()["content"][0]
        assert f"params.message{names}" in ws["error"]["message"]
    assert AgentSession.objects.get(pk=session_id).messages.count() == 0


def test_websocket_refuses_a_text_block_without_text_as_rest_does(live, tenant, session_id, websocket):
    """Regression: chat.send used to accept any block typed text or image, text or no text."""
    reply = websocket.call("chat.send", {"session": session_id, "message": [{"type": "text"}]})
    assert reply["ok"] is False and reply["error"] == {
        "code": "invalid_params", "message": "params.message[0].text must be a string.",
    }
    assert websocket.call("chat.send", {"session": session_id, "message": [{"type": "text", "text": "hi"}]})["ok"]
