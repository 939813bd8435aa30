"""The one check of a message's content, shared by every edge that takes one: the OpenAI-compatible API
(each of `messages`), REST (`POST /api/sessions/{id}/messages/` `content`) and the WebSocket (`chat.send`
`message`). A content refused on one edge is refused on all of them, in the same words.

Content is a string, or a list of parts in either dialect a client may speak:

- `{"type": "text", "text": "..."}` (both);
- `{"type": "image_url", "image_url": {"url": "https://..." | "data:image/png;base64,...", "detail"?}}` (OpenAI);
- `{"type": "image", "source": {"type": "url", "url"} | {"type": "base64", "media_type", "data"}}` (Anthropic).

It comes out as the transcript's blocks (Anthropic's, sessions/providers/base.py) with only the keys above,
so nothing a provider would refuse reaches a run. Blank text (empty or only whitespace) carries nothing and
is left out: Anthropic refuses such blocks, while OpenAI clients send empty content for turns that only
called tools.

Images are held to what every provider here takes, here and not by the provider in the middle of a run
(docs/images.md):

- PNG, JPEG, GIF or WebP (IMAGE_MEDIA_TYPES). Anything else, an SVG, a PDF, a `file` or `input_audio` part,
  is refused naming the part and saying what is accepted.
- Inline data is `data:<type>;base64,<data>` (or Anthropic's base64 source); the base64 must decode, and
  the bytes must be what the type says: its magic bytes, and a header giving the picture's size, at most
  MAX_IMAGE_SIDE pixels a side. It is stored re-encoded in canonical base64.
- At most BEAMCLAW["IMAGE_MAX_BYTES"] bytes an image (decoded) and BEAMCLAW["IMAGE_MAX_PER_MESSAGE"]
  images a message.

This module does no I/O. An http(s) image URL comes out as a UrlImageBlock, which sessions/images.py
replaces with the fetched image, checked by `image_bytes_check` as an inline one is, before it is stored.
"""

import base64
import binascii
import struct

from django.conf import settings

from beamclaw_project.errors import InvalidInput

# ASCII text of this length fits in a WebSocket frame (MAX_FRAME_BYTES, 512 KiB), so an over-long message
# gets this refusal on every edge, not a closed socket on one and a 400 on the others. About 60k tokens.
MAX_TEXT_CHARS = 250_000

IMAGE_MEDIA_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")
IMAGES_ACCEPTED = "PNG, JPEG, GIF or WebP (image/png, image/jpeg, image/gif, image/webp)"
# Names clients give these types that providers do not take as they are.
_MEDIA_TYPE_ALIASES = {"image/jpg": "image/jpeg", "image/pjpeg": "image/jpeg"}
_FORMAT_NAMES = {"image/png": "PNG", "image/jpeg": "JPEG", "image/gif": "GIF", "image/webp": "WebP"}
# Anthropic refuses an image larger than this on either side.
MAX_IMAGE_SIDE = 8000
# Part types clients send for content no model here can be given, and what that content is.
_UNSUPPORTED_PARTS = {
    "file": "files (PDFs among them)", "input_file": "files (PDFs among them)", "document": "documents",
    "input_audio": "audio", "audio": "audio", "video_url": "video",
}
_IMAGE_DETAILS = ("auto", "low", "high")


class ContentInvalid(InvalidInput):
    """`field` is the part at fault (e.g. `messages[2].content[0]`); the message starts with it."""


class UrlImageBlock(dict):
    """An image block whose source is an http(s) URL the gateway has still to fetch (sessions/images.py).

    It remembers the part it came from, so a failed fetch names it; to everything else (equality, JSON)
    it is the plain block."""

    def __init__(self, url: str, where: str):
        super().__init__(type="image", source={"type": "url", "url": url})
        self.where = where


def content_parse(value, *, where: str = "content", allow_empty: bool = False) -> list[dict]:
    """`value` as content blocks; raises ContentInvalid naming the offending part (`where` is the name of
    the value itself). Empty content is refused unless `allow_empty` (turns of an OpenAI history)."""
    if value is None:
        blocks = []
    elif isinstance(value, str):
        blocks = [_text_block(value)]
    elif isinstance(value, list):
        blocks = [_block(part, f"{where}[{i}]") for i, part in enumerate(value)]
    else:
        raise ContentInvalid(f"{where} must be a string or an array of content parts.", field=where)
    blocks = [block for block in blocks if block is not None]
    if not blocks and not allow_empty:
        raise ContentInvalid(f"{where} is empty: send a non-empty string, or a list with a text or image part.", field=where)
    chars = sum(len(block["text"]) for block in blocks if block["type"] == "text")
    if chars > MAX_TEXT_CHARS:
        raise ContentInvalid(
            f"{where} has {chars} characters of text; at most {MAX_TEXT_CHARS} are allowed in one message.", field=where
        )
    images = sum(1 for block in blocks if block["type"] == "image")
    most = settings.BEAMCLAW["IMAGE_MAX_PER_MESSAGE"]
    if images > most:
        raise ContentInvalid(f"{where} has {images} images; at most {most} are allowed in one message.", field=where)
    return blocks


def image_media_type(value, where: str) -> str:
    """The accepted media type `value` names (`image/jpg` is image/jpeg), or ContentInvalid saying which are."""
    media_type = value.strip().lower() if isinstance(value, str) else ""
    media_type = _MEDIA_TYPE_ALIASES.get(media_type, media_type)
    if media_type not in IMAGE_MEDIA_TYPES:
        shown = f"{value.strip()!r} is" if isinstance(value, str) and value.strip() else "images of no stated type are"
        raise ContentInvalid(f"{where}: {shown} not supported; images must be {IMAGES_ACCEPTED}.", field=where)
    return media_type


def image_bytes_check(data: bytes, media_type: str, where: str) -> None:
    """Refuse (ContentInvalid naming `where`) image bytes over the size cap, or that are not a picture of the
    accepted `media_type` (magic bytes, and a readable size of at most MAX_IMAGE_SIDE pixels a side)."""
    most = settings.BEAMCLAW["IMAGE_MAX_BYTES"]
    if len(data) > most:
        raise ContentInvalid(
            f"{where}: the image is {len(data)} bytes; at most {bytes_text(most)} are accepted per image.",
            field=where,
        )
    actual = _sniffed_type(data)
    if actual is None:
        raise ContentInvalid(
            f"{where}: the data is not an image this gateway takes; images must be {IMAGES_ACCEPTED}.", field=where
        )
    if actual != media_type:
        raise ContentInvalid(
            f"{where}: the data is a {_FORMAT_NAMES[actual]} image, not {media_type} as declared; "
            f"declare it as {actual}.",
            field=where,
        )
    size = _dimensions(data, actual)
    if size is None or 0 in size:
        raise ContentInvalid(f"{where}: the {_FORMAT_NAMES[actual]} image is damaged or cut short.", field=where)
    if max(size) > MAX_IMAGE_SIDE:
        raise ContentInvalid(
            f"{where}: the image is {size[0]}x{size[1]} pixels; at most {MAX_IMAGE_SIDE} pixels a side are accepted.",
            field=where,
        )


def base64_image_block(media_type: str, data: bytes) -> dict:
    return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": base64.b64encode(data).decode("ascii")}}


def bytes_text(size: int) -> str:
    """A limit as people read it, and exactly: `3.75 MiB (3932160 bytes)`, `512 KiB (524288 bytes)`."""
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{round(size / scale, 2):g} {unit} ({size} bytes)"
    return f"{size} bytes"


def _text_block(text: str) -> dict | None:
    return {"type": "text", "text": text} if text.strip() else None


def _block(part, where: str) -> dict | None:
    if not isinstance(part, dict) or not isinstance(part.get("type"), str):
        raise ContentInvalid(f"{where} must be an object with a 'type'.", field=where)
    kind = part["type"]
    if kind == "text":
        if not isinstance(part.get("text"), str):
            raise ContentInvalid(f"{where}.text must be a string.", field=where)
        return _text_block(part["text"])
    if kind == "image_url":
        image_url = part.get("image_url")
        url = image_url.get("url") if isinstance(image_url, dict) else None
        if not isinstance(url, str) or not url:
            raise ContentInvalid(f"{where}.image_url.url must be a string.", field=where)
        # OpenAI's resolution hint has no counterpart here: checked, then the model sees the image as it is.
        if image_url.get("detail") is not None and image_url["detail"] not in _IMAGE_DETAILS:
            raise ContentInvalid(f"{where}.image_url.detail must be one of {', '.join(_IMAGE_DETAILS)}.", field=where)
        return _image_from_url(url, where)
    if kind == "image":
        return _image_from_source(part.get("source"), where)
    what = f": {_UNSUPPORTED_PARTS[kind]} cannot be given to the model" if kind in _UNSUPPORTED_PARTS else ""
    raise ContentInvalid(
        f"{where}.type '{kind}' is not supported{what}. Send 'text' parts, and images ({IMAGES_ACCEPTED}) as "
        "'image_url' (OpenAI) or 'image' (Anthropic) parts.",
        field=where,
    )


def _image_from_url(url: str, where: str) -> dict:
    if url[:5].lower() == "data:":
        return _image_from_data_url(url, where)
    if _is_http(url):
        return UrlImageBlock(url, where)
    raise ContentInvalid(f"{where}.image_url.url must be an http(s) URL or a data URL.", field=where)


def _image_from_data_url(url: str, where: str) -> dict:
    header, comma, data = url[5:].partition(",")
    media_type, *params = header.split(";")
    if not comma or not params or params[-1].strip().lower() != "base64" or not media_type.strip():
        raise ContentInvalid(
            f"{where}: a data URL must be data:<type>;base64,<data>, e.g. data:image/png;base64,iVBORw0KGgo...",
            field=where,
        )
    return _base64_image(image_media_type(media_type, where), data, where)


def _image_from_source(source, where: str) -> dict:
    """An Anthropic image block, held to what an OpenAI image_url part may say."""
    kind = source.get("type") if isinstance(source, dict) else None
    if kind == "url" and _is_http(source.get("url")):
        return UrlImageBlock(source["url"], where)
    if kind == "base64" and isinstance(source.get("data"), str):
        return _base64_image(image_media_type(source.get("media_type"), where), source["data"], where)
    raise ContentInvalid(
        f'{where}.source must be {{"type": "base64", "media_type": "image/...", "data": "..."}} '
        f'or {{"type": "url", "url": "https://..."}}.',
        field=where,
    )


def _is_http(url) -> bool:
    return isinstance(url, str) and url[:8].lower().startswith(("http://", "https://"))


def _base64_image(media_type: str, data: str, where: str) -> dict:
    # Encoders that wrap lines (MIME's 76 columns) and ones that drop the padding are common; both are
    # unambiguous, so they are accepted, and the image is stored in canonical base64 either way.
    text = "".join(data.split())
    text += "=" * (-len(text) % 4)
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if not raw:
        raise ContentInvalid(
            f"{where}: the image data is not valid base64 (the standard alphabet A-Z, a-z, 0-9, + and /).", field=where
        )
    image_bytes_check(raw, media_type, where)
    return base64_image_block(media_type, raw)


def _sniffed_type(data: bytes) -> str | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def _dimensions(data: bytes, media_type: str) -> tuple[int, int] | None:
    """(width, height) from the image's header, or None if the header is not there."""
    if media_type == "image/png":
        return struct.unpack(">II", data[16:24]) if data[12:16] == b"IHDR" and len(data) >= 24 else None
    if media_type == "image/gif":
        return struct.unpack("<HH", data[6:10]) if len(data) >= 10 else None
    if media_type == "image/webp":
        return _webp_dimensions(data)
    return _jpeg_dimensions(data)


def _webp_dimensions(data: bytes) -> tuple[int, int] | None:
    if len(data) < 30:
        return None
    chunk = data[12:16]
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":  # lossy: the key frame's start code, then the size
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and data[20] == 0x2F:  # lossless: 14 bits each, minus one
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":  # extended: the canvas, 24 bits each, minus one
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    return None


# Start-of-frame markers, which carry the size: C0-CF but for DHT (C4), JPG (C8) and DAC (CC).
_JPEG_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_dimensions(data: bytes) -> tuple[int, int] | None:
    """Walk the segments before the image data to the start-of-frame segment."""
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image, or the scan began: no frame header came first
            return None
        if marker in _JPEG_FRAME_MARKERS:
            if i + 9 > len(data):
                return None
            height, width = struct.unpack(">HH", data[i + 5:i + 9])
            return width, height
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return None
