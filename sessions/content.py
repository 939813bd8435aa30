"""The one check of a message's content, shared by every edge that takes one: the OpenAI-compatible API
(each of `messages`), REST (`POST /api/sessions/{id}/messages/` `content`) and the WebSocket (`chat.send`
`message`). A content refused on one edge is refused on all of them, in the same words.

Content is a string, or a list of parts in either dialect a client may speak:

- `{"type": "text", "text": "..."}` (both);
- `{"type": "image_url", "image_url": {"url": "https://..." | "data:image/png;base64,..."}}` (OpenAI);
- `{"type": "image", "source": {"type": "url", "url"} | {"type": "base64", "media_type", "data"}}` (Anthropic).

It comes out as the transcript's blocks (Anthropic's, sessions/providers/base.py) with only the keys above,
so nothing a provider would refuse reaches a run. Blank text (empty or only whitespace) carries nothing and
is left out: Anthropic refuses such blocks, while OpenAI clients send empty content for turns that only
called tools.
"""

from beamclaw_project.errors import InvalidInput

# ASCII text of this length fits in a WebSocket frame (MAX_FRAME_BYTES, 512 KiB), so an over-long message
# gets this refusal on every edge, not a closed socket on one and a 400 on the others. About 60k tokens.
MAX_TEXT_CHARS = 250_000


class ContentInvalid(InvalidInput):
    """`field` is the part at fault (e.g. `messages[2].content[0]`); the message starts with it."""


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
    return blocks


def _text_block(text: str) -> dict | None:
    return {"type": "text", "text": text} if text.strip() else None


def _block(part, where: str) -> dict | None:
    if not isinstance(part, dict) or not isinstance(part.get("type"), str):
        raise ContentInvalid(f"{where} must be an object with a 'type'.", field=where)
    if part["type"] == "text":
        if not isinstance(part.get("text"), str):
            raise ContentInvalid(f"{where}.text must be a string.", field=where)
        return _text_block(part["text"])
    if part["type"] == "image_url":
        image_url = part.get("image_url")
        url = image_url.get("url") if isinstance(image_url, dict) else None
        if not isinstance(url, str) or not url:
            raise ContentInvalid(f"{where}.image_url.url must be a string.", field=where)
        return _image_from_url(url, where)
    if part["type"] == "image":
        return _image_from_source(part.get("source"), where)
    raise ContentInvalid(
        f"{where}.type '{part['type']}' is not supported; use 'text', 'image_url' or 'image'.", field=where
    )


def _image_from_url(url: str, where: str) -> dict:
    if url.startswith("data:"):
        header, _, data = url.partition(",")
        media_type = header[5:].split(";")[0]
        if ";base64" not in header or not media_type.startswith("image/") or not data:
            raise ContentInvalid(f"{where}: data URLs must look like data:image/png;base64,....", field=where)
        return _base64_image(media_type, data)
    if _is_http(url):
        return _url_image(url)
    raise ContentInvalid(f"{where}.image_url.url must be an http(s) URL or a data URL.", field=where)


def _image_from_source(source, where: str) -> dict:
    """An Anthropic image block, held to what an OpenAI image_url part may say."""
    kind = source.get("type") if isinstance(source, dict) else None
    if kind == "url" and _is_http(source.get("url")):
        return _url_image(source["url"])
    if kind == "base64":
        media_type, data = source.get("media_type"), source.get("data")
        if isinstance(media_type, str) and media_type.startswith("image/") and isinstance(data, str) and data:
            return _base64_image(media_type, data)
    raise ContentInvalid(
        f'{where}.source must be {{"type": "base64", "media_type": "image/...", "data": "..."}} '
        f'or {{"type": "url", "url": "https://..."}}.',
        field=where,
    )


def _is_http(url) -> bool:
    return isinstance(url, str) and url.startswith(("http://", "https://"))


def _url_image(url: str) -> dict:
    return {"type": "image", "source": {"type": "url", "url": url}}


def _base64_image(media_type: str, data: str) -> dict:
    return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
