"""One content check for every edge (sessions/content.py): the OpenAI API, REST and the WebSocket refuse the
same messages, naming the same part. Images are checked here too (what is fetched: tests/sessions/test_images.py)."""

import base64
import struct
import zlib

import httpx
import pytest

from sessions.content import MAX_IMAGE_SIDE, MAX_TEXT_CHARS, ContentInvalid, UrlImageBlock, content_parse
from sessions.models import AgentSession
from tests.sessions.test_websocket import WS

# --- tiny real images, built here rather than stored ---------------------------------------------------


def png(width: int = 1, height: int = 1, *, padding: int = 0) -> bytes:
    """A red RGB PNG; `padding` adds a private ancillary chunk of that many bytes (a valid, larger file)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    extra = chunk(b"prVt", bytes(padding)) if padding else b""
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + extra + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def jpeg(width: int = 1, height: int = 1) -> bytes:
    """The segments up to the frame header, which is all a JPEG's type and size are read from."""
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof0 = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + app0 + sof0 + b"\xff\xd9"


def gif(width: int = 1, height: int = 1) -> bytes:
    return b"GIF89a" + struct.pack("<HHBBB", width, height, 0, 0, 0) + b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x00;"


def webp(width: int = 1, height: int = 1) -> bytes:
    """An extended (VP8X) WebP header: the canvas size, 24 bits each, minus one."""
    chunk = b"VP8X" + struct.pack("<I", 10) + bytes(4) + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


def data_url(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def base64_block(data: bytes, media_type: str = "image/png") -> dict:
    return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": base64.b64encode(data).decode()}}


def test_strings_and_parts_of_both_dialects_become_blocks():
    assert content_parse("hi") == [{"type": "text", "text": "hi"}]
    parts = [
        {"type": "text", "text": "look", "extra": 1},
        {"type": "text", "text": "  "},
        {"type": "image_url", "image_url": {"url": data_url(png()), "detail": "low"}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}, "cache_control": {}},
        {"type": "image", "source": {"type": "base64", "media_type": "image/gif", "data": base64.b64encode(gif()).decode()}},
    ]
    blocks = content_parse(parts, where="messages[0].content")
    assert blocks == [
        {"type": "text", "text": "look"},
        base64_block(png()),
        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
        base64_block(gif(), "image/gif"),
    ]
    # The URL is fetched later (sessions/images.py), which names the part it came from if that fails.
    assert isinstance(blocks[2], UrlImageBlock) and blocks[2].where == "messages[0].content[3]"
    assert content_parse(None, allow_empty=True) == [] and content_parse("", allow_empty=True) == []


@pytest.mark.parametrize(
    "data, declared, stored",
    [
        (png(3, 2), "image/png", "image/png"),
        (jpeg(640, 480), "image/jpeg", "image/jpeg"),
        (jpeg(), "image/jpg", "image/jpeg"),
        (jpeg(), "IMAGE/JPEG", "image/jpeg"),
        (gif(), "image/gif", "image/gif"),
        (webp(800, 600), "image/webp", "image/webp"),
        (png(MAX_IMAGE_SIDE, 1), "image/png", "image/png"),
    ],
)
def test_each_accepted_type_is_stored_under_its_canonical_name(data, declared, stored):
    assert content_parse([image_part(data_url(data, declared))]) == [base64_block(data, stored)]


def test_wrapped_or_unpadded_base64_is_stored_canonical():
    encoded = base64.b64encode(png(5, 5)).decode()
    wrapped = "\n".join(encoded[i:i + 76] for i in range(0, len(encoded), 76))
    unpadded = encoded.rstrip("=")
    assert unpadded != encoded, "the test image's base64 must end in padding"
    for data in (wrapped, unpadded):
        assert content_parse([image_part(f"data:image/png;base64,{data}")]) == [base64_block(png(5, 5))]


ACCEPTED = "images must be PNG, JPEG, GIF or WebP (image/png, image/jpeg, image/gif, image/webp)"


@pytest.mark.parametrize(
    "part, names",
    [
        (image_part("data:image/svg+xml;base64,PHN2Zz48L3N2Zz4="), f"'image/svg+xml' is not supported; {ACCEPTED}"),
        (image_part("data:application/pdf;base64,JVBERi0xLjQ="), f"'application/pdf' is not supported; {ACCEPTED}"),
        (image_part(data_url(b"BM" + bytes(60), "image/bmp")), "'image/bmp' is not supported"),
        (image_part(data_url(jpeg(), "image/png")), "the data is a JPEG image, not image/png as declared; declare it as image/jpeg"),
        (image_part(data_url(b"<svg/>")), "the data is not an image this gateway takes"),
        (image_part(data_url(png()[:20])), "the PNG image is damaged or cut short"),
        (image_part(data_url(b"\xff\xd8\xff\xda" + bytes(20), "image/jpeg")), "the JPEG image is damaged or cut short"),
        (image_part(data_url(png(MAX_IMAGE_SIDE + 1, 1))), f"{MAX_IMAGE_SIDE + 1}x1 pixels; at most {MAX_IMAGE_SIDE}"),
        (image_part(data_url(webp(1, 9000), "image/webp")), "1x9000 pixels"),
        (image_part("data:image/png;base64,not*base64"), "not valid base64"),
        (image_part("data:image/png;base64,"), "not valid base64"),
        (image_part("data:image/png," + "iVBORw0KGgo="), "a data URL must be data:<type>;base64,<data>"),
        (image_part("data:;base64,iVBORw0KGgo="), "a data URL must be data:<type>;base64,<data>"),
        ({"type": "image_url", "image_url": {"url": data_url(png()), "detail": "ultra"}}, ".image_url.detail must be one of auto, low, high"),
        ({"type": "image", "source": {"type": "base64", "media_type": "image/svg+xml", "data": "PHN2Zz4="}}, "'image/svg+xml' is not supported"),
        ({"type": "image", "source": {"type": "base64", "data": base64.b64encode(png()).decode()}}, "images of no stated type are not supported"),
        ({"type": "image", "source": {"type": "file", "file_id": "file_1"}}, ".source must be"),
        ({"type": "file", "file": {"file_id": "file_1"}}, ".type 'file' is not supported: files (PDFs among them) cannot be given to the model"),
        ({"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}, ".type 'input_audio' is not supported: audio cannot"),
    ],
)
def test_an_image_no_model_would_take_is_refused_naming_the_part(part, names):
    with pytest.raises(ContentInvalid) as refused:
        content_parse([{"type": "text", "text": "see"}, part], where="messages[1].content")
    assert refused.value.field == "messages[1].content[1]"
    assert refused.value.message.startswith("messages[1].content[1]") and names in refused.value.message, refused.value.message


def test_images_are_capped_in_size_and_number(settings):
    settings.BEAMCLAW = {**settings.BEAMCLAW, "IMAGE_MAX_BYTES": 1000, "IMAGE_MAX_PER_MESSAGE": 3}
    big = png(padding=1000)
    with pytest.raises(ContentInvalid) as refused:
        content_parse([image_part(data_url(big))])
    assert refused.value.message == f"content[0]: the image is {len(big)} bytes; at most 1000 bytes are accepted per image."
    assert len(content_parse([image_part(data_url(png()))] * 3)) == 3
    with pytest.raises(ContentInvalid) as refused:
        content_parse([image_part(data_url(png()))] * 2 + [image_part("https://example.com/a.png")] * 2, where="messages[0].content")
    assert refused.value.field == "messages[0].content"
    assert refused.value.message == "messages[0].content has 4 images; at most 3 are allowed in one message."


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
