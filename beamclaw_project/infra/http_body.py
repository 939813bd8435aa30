"""Reading a response body whose decoded size is capped, whatever its Content-Encoding claims.

A few kilobytes of gzip can decode to gigabytes; a decoder that hands back everything one network chunk
expands to (httpx's does) puts the whole expansion in memory before any size check can run. Here every
decoding stage produces at most `chunk_size` bytes per step and only when the next stage asks for more, so
a reader that stops at its cap holds about cap + one chunk per stage, nested encodings included.
"""

import zlib
from collections.abc import Iterable, Iterator

CHUNK_SIZE = 64 * 1024
_GZIP_WBITS = 16 + zlib.MAX_WBITS
_ZLIB_WBITS = zlib.MAX_WBITS
_RAW_DEFLATE_WBITS = -zlib.MAX_WBITS


class BodyDecodeError(Exception):
    """The body is in an encoding we do not decode, or is not valid in the one it claims."""


def _inflate(chunks: Iterable[bytes], wbits: int, chunk_size: int) -> Iterator[bytes]:
    decoder = zlib.decompressobj(wbits)
    try:
        for data in chunks:
            while data and not decoder.eof:
                out = decoder.decompress(data, chunk_size)
                if out:
                    yield out
                data = decoder.unconsumed_tail
            if decoder.eof:
                return  # bytes after the end of the stream are not part of the body
        # Input is exhausted; what zlib still holds is bounded by its window, not by the input.
        tail = decoder.flush()
        if tail:
            yield tail
    except zlib.error as exc:
        raise BodyDecodeError(f"invalid compressed data: {exc}") from None


def _deflate(chunks: Iterable[bytes], chunk_size: int) -> Iterator[bytes]:
    # "deflate" is meant to be zlib-wrapped, but some servers send raw deflate; the first two bytes tell.
    iterator = iter(chunks)
    head = b""
    for data in iterator:
        head += data
        if len(head) >= 2:
            break
    wrapped = len(head) >= 2 and head[0] & 0x0F == 8 and (head[0] << 8 | head[1]) % 31 == 0

    def rest():
        yield head
        yield from iterator

    yield from _inflate(rest(), _ZLIB_WBITS if wrapped else _RAW_DEFLATE_WBITS, chunk_size)


def decoded_chunks(raw_chunks: Iterable[bytes], content_encoding: str | None, *, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
    """The decoded body, lazily, in pieces of at most `chunk_size` bytes.

    `content_encoding` is the header's value: codings in the order they were applied (`gzip, deflate`),
    so they are undone in reverse. Supported: identity, gzip (x-gzip), deflate. Anything else raises
    BodyDecodeError before any byte is produced."""
    codings = [c.strip().lower() for c in (content_encoding or "").split(",") if c.strip()]
    stream: Iterable[bytes] = raw_chunks
    for coding in reversed(codings):
        if coding == "identity":
            continue
        if coding in ("gzip", "x-gzip"):
            stream = _inflate(stream, _GZIP_WBITS, chunk_size)
        elif coding == "deflate":
            stream = _deflate(stream, chunk_size)
        else:
            raise BodyDecodeError(f"the body is encoded with {coding!r}, which is not decoded (only gzip and deflate are)")
    return iter(stream)
