"""The model endpoint's HTTP/1.1 transport for httpx2, the anthropic SDK's HTTP client.

httpx2's own transport reads each network chunk through httpcore2's connection pool and h11's state
machine; for a streamed reply that is every event the model sends, and it cost the worker more CPU than the
rest of a delta's way through the gateway (docs/performance.md, twenty-second step). This transport speaks
HTTP/1.1 itself, over httpcore2's network streams: connecting, TLS, timeouts and their errors stay
httpcore2's, and a drain still cuts a blocked read at once. It sends a request in one write, parses the
response's head, and reads its body by Content-Length, by chunks or until the connection closes, giving httpx2
what one network read brought as one piece.

Only what the SDK sends is supported: requests whose body is known before they go (its JSON, its multipart
uploads) and one request at a time per connection. The client uses it for the deployment's endpoint only when
no proxy is set in the environment (sessions/providers/anthropic.py); otherwise httpx2's transport is used.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import httpcore2
import httpx2

from beamclaw_project.infra.draining import cut_on_drain

# Longest response head read before giving up on the server (h11's default is 16 KB).
MAX_HEAD_BYTES = 64 * 1024
READ_SIZE = 64 * 1024
# As httpx2's defaults under the SDK: idle connections kept per endpoint, and for how long.
MAX_IDLE_CONNECTIONS = 100
KEEPALIVE_EXPIRY_SECONDS = 5.0
# The SDK's TCP keep-alive options (anthropic._base_client._DefaultHttpxClient): a connection that stays open
# through a long reply is probed, so a peer that vanished is noticed.
KEEPALIVE_SOCKET_OPTIONS = tuple(
    option
    for option in (
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE, True),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPINTVL", None), 60),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPCNT", None), 5),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPIDLE", None), 60),
    )
    if option[1] is not None
)
_NO_BODY_STATUSES = frozenset({204, 304})
_HEX_DIGITS = b"0123456789abcdefABCDEF"


class Http1Transport(httpx2.BaseTransport):
    def __init__(
        self,
        *,
        socket_options=KEEPALIVE_SOCKET_OPTIONS,
        max_idle: int = MAX_IDLE_CONNECTIONS,
        keepalive_expiry: float = KEEPALIVE_EXPIRY_SECONDS,
    ):
        self._network_backend = httpcore2.SyncBackend()
        self._socket_options = list(socket_options)
        self._max_idle = max_idle
        self._keepalive_expiry = keepalive_expiry
        # httpx2's default: the system's (or SSL_CERT_FILE's) authorities, hostnames checked. Built now, as
        # httpx2 builds it (~20-50 ms), rather than in the first request's way.
        self._ssl_context = httpx2.create_ssl_context()
        self._idle: dict[tuple, list[tuple[httpcore2.NetworkStream, float]]] = {}
        self._lock = threading.Lock()

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        timeouts = request.extensions.get("timeout") or {}
        origin = _origin(request.url)
        stream = self._idle_connection(origin) or self._connect(origin, timeouts.get("connect"))
        reader = _Reader(stream)
        try:
            _write_request(stream, request, timeouts.get("write"))
            reader.start(timeouts.get("read"))
            status, reason, version, headers = reader.head()
            while 100 <= status < 200:  # interim responses (100 Continue, 103 Early Hints): the answer follows
                status, reason, version, headers = reader.head()
            body = _Body(self, origin, reader, request, status, version, headers)
        except BaseException:
            reader.finish()
            stream.close()
            raise
        return httpx2.Response(
            status,
            headers=headers,
            stream=body,
            extensions={"http_version": version, "reason_phrase": reason},
        )

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for connections in idle.values():
            for stream, _ in connections:
                stream.close()

    def _connect(self, origin: tuple, timeout: float | None) -> httpcore2.NetworkStream:
        scheme, host, port = origin
        with _mapped_errors():
            stream = self._network_backend.connect_tcp(
                host, port, timeout=timeout, socket_options=self._socket_options
            )
            if scheme == "https":
                try:
                    stream = stream.start_tls(self._ssl_context, server_hostname=host, timeout=timeout)
                except BaseException:
                    stream.close()
                    raise
        return stream

    def _idle_connection(self, origin: tuple) -> httpcore2.NetworkStream | None:
        """The connection to `origin` used last, if one is still good: not expired, and not readable (an idle
        HTTP/1.1 connection that reads anything was closed by the server, or sent what nobody asked for)."""
        now = time.monotonic()
        while True:
            with self._lock:
                connections = self._idle.get(origin)
                if not connections:
                    return None
                stream, idle_since = connections.pop()
            if now - idle_since < self._keepalive_expiry and not stream.get_extra_info("is_readable"):
                return stream
            stream.close()

    def _release(self, origin: tuple, stream: httpcore2.NetworkStream) -> None:
        with self._lock:
            connections = self._idle.setdefault(origin, [])
            if len(connections) < self._max_idle:
                connections.append((stream, time.monotonic()))
                return
        stream.close()


def _origin(url: httpx2.URL) -> tuple:
    scheme = url.scheme
    if scheme not in ("http", "https"):
        raise httpx2.UnsupportedProtocol(f"Request URL has an unsupported protocol '{scheme}://'.")
    if not url.raw_host:
        raise httpx2.UnsupportedProtocol(f"Request URL is missing a host: {url}")
    port = url.port or (443 if scheme == "https" else 80)
    return scheme, url.raw_host.decode("ascii"), port


def _write_request(stream: httpcore2.NetworkStream, request: httpx2.Request, timeout: float | None) -> None:
    lines = [b"%s %s HTTP/1.1\r\n" % (request.method.encode("ascii"), request.url.raw_path)]
    chunked = False
    for name, value in request.headers.raw:
        if b"\r" in value or b"\n" in value or b"\r" in name or b"\n" in name or b":" in name:
            raise httpx2.LocalProtocolError(f"Illegal header {name!r}")
        if name.lower() == b"transfer-encoding" and value.lower() == b"chunked":
            chunked = True
        lines.append(b"%s: %s\r\n" % (name, value))
    lines.append(b"\r\n")
    head = b"".join(lines)
    with _mapped_errors():
        if not chunked:
            # Content-Length is set by httpx2 for a body known before it goes: the SDK's bodies all are.
            stream.write(head + b"".join(request.stream), timeout)
            return
        stream.write(head, timeout)
        for piece in request.stream:
            if piece:
                stream.write(b"%x\r\n%s\r\n" % (len(piece), piece), timeout)
        stream.write(b"0\r\n\r\n", timeout)


class _Reader:
    """A connection's bytes as the response's parts need them: its head, then its body. Once the request is
    sent, until the response's end, a drain (or the reading thread's abort, beamclaw_project/infra/draining.py)
    shuts the connection down, which ends a blocked read at once; the reads themselves go straight to the
    socket (a network backend's read costs twice a recv per streamed event)."""

    def __init__(self, stream: httpcore2.NetworkStream):
        self.stream = stream
        self.socket = stream.get_extra_info("socket")
        self.buffer = b""
        self._cut = None

    def start(self, timeout: float | None) -> None:
        self._cut = cut_on_drain(self.socket)
        self._cut.__enter__()
        self.socket.settimeout(timeout)

    def finish(self) -> None:
        if self._cut is not None:
            cut, self._cut = self._cut, None
            cut.__exit__(None, None, None)

    def read(self) -> bytes:
        """What the next network read brings; b"" once the server closed the connection."""
        try:
            return self.socket.recv(READ_SIZE)
        except TimeoutError as exc:
            raise httpx2.ReadTimeout(str(exc) or "timed out") from exc
        except OSError as exc:
            raise httpx2.ReadError(str(exc)) from exc

    def more(self) -> None:
        data = self.read()
        if not data:
            raise httpx2.RemoteProtocolError("Server disconnected without sending a complete response.")
        self.buffer += data

    def head(self) -> tuple[int, bytes, bytes, list[tuple[bytes, bytes]]]:
        while (end := self.buffer.find(b"\r\n\r\n")) < 0:
            if len(self.buffer) > MAX_HEAD_BYTES:
                raise httpx2.RemoteProtocolError("The response's head is too long.")
            self.more()
        head, self.buffer = self.buffer[:end], self.buffer[end + 4:]
        status_line, *header_lines = head.split(b"\r\n")
        version, _, rest = status_line.partition(b" ")
        code, _, reason = rest.partition(b" ")
        if version not in (b"HTTP/1.1", b"HTTP/1.0") or len(code) != 3 or not code.isdigit():
            raise httpx2.RemoteProtocolError(f"Malformed status line {status_line[:100]!r}")
        headers = []
        for line in header_lines:
            name, colon, value = line.partition(b":")
            if not colon or not name or name != name.strip() or line[:1] in (b" ", b"\t"):
                raise httpx2.RemoteProtocolError(f"Malformed header line {line[:100]!r}")
            headers.append((name, value.strip(b" \t")))
        return int(code), reason, version, headers


class _Body(httpx2.SyncByteStream):
    """The response's body, one piece per network read. Read to its end, the connection goes back to the
    transport's idle ones (unless either side said it closes); closed before, the connection is closed."""

    def __init__(self, transport: Http1Transport, origin: tuple, reader: _Reader, request: httpx2.Request,
                 status: int, version: bytes, headers: list[tuple[bytes, bytes]]):
        self._transport = transport
        self._origin = origin
        self._reader = reader
        self._complete = False
        self._closed = False
        connection = b",".join(value for name, value in [*headers, *request.headers.raw]
                               if name.lower() == b"connection").lower()
        self._reusable = version == b"HTTP/1.1" and b"close" not in connection
        encodings = [value.lower() for name, value in headers if name.lower() == b"transfer-encoding"]
        lengths = {value for name, value in headers if name.lower() == b"content-length"}
        if request.method == "HEAD" or status in _NO_BODY_STATUSES:
            self._complete = True
            self._pieces = iter(())
        elif encodings:
            if encodings[-1].rsplit(b",", 1)[-1].strip() != b"chunked":
                raise httpx2.RemoteProtocolError("Unsupported Transfer-Encoding")
            self._reusable = self._reusable and not lengths
            self._pieces = self._chunked()
        elif lengths:
            if len(lengths) > 1 or not (length := next(iter(lengths))).strip().isdigit():
                raise httpx2.RemoteProtocolError("Malformed Content-Length")
            self._pieces = self._sized(int(length))
        else:
            self._reusable = False
            self._pieces = self._until_close()

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._pieces
            self._complete = True
        finally:
            self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._reader.finish()
        stream = self._reader.stream
        if self._complete and self._reusable and not self._reader.buffer:
            self._transport._release(self._origin, stream)
        else:
            stream.close()

    def _sized(self, length: int) -> Iterator[bytes]:
        reader = self._reader
        while length:
            if not reader.buffer:
                reader.more()
            piece, reader.buffer = reader.buffer[:length], reader.buffer[length:]
            length -= len(piece)
            yield piece

    def _until_close(self) -> Iterator[bytes]:
        reader = self._reader
        if reader.buffer:
            piece, reader.buffer = reader.buffer, b""
            yield piece
        while data := reader.read():
            yield data

    def _chunked(self) -> Iterator[bytes]:
        """Chunked transfer coding (RFC 9112 §7.1): every chunk the buffer holds whole, or in part, is taken
        before the next read, so the events one network read brought reach httpx2 as one piece."""
        reader = self._reader
        left = 0  # bytes of the current chunk not yet taken; -1: its data was taken, its CRLF is due
        while True:
            pieces = []
            while True:
                buffer = reader.buffer
                if left > 0:
                    if not buffer:
                        break
                    piece = buffer[:left]
                    pieces.append(piece)
                    reader.buffer = buffer[len(piece):]
                    left -= len(piece)
                    if left:
                        break
                    left = -1
                    continue
                if left < 0:
                    if len(buffer) < 2:
                        break
                    if buffer[:2] != b"\r\n":
                        raise httpx2.RemoteProtocolError("Malformed chunked body: a chunk does not end with CRLF")
                    reader.buffer = buffer[2:]
                    left = 0
                    continue
                end = buffer.find(b"\r\n")
                if end < 0:
                    if len(buffer) > MAX_HEAD_BYTES:
                        raise httpx2.RemoteProtocolError("Malformed chunked body: a chunk size line is too long")
                    break
                size = buffer[:end].split(b";", 1)[0].strip(b" \t")
                # Hex digits only: Python's int() would also take "0x1f", "1_0" or "+5".
                if not size or len(size) > 16 or size.strip(_HEX_DIGITS):
                    raise httpx2.RemoteProtocolError(f"Malformed chunk size {size[:20]!r}")
                left = int(size, 16)
                reader.buffer = buffer[end + 2:]
                if left == 0:
                    if pieces:
                        yield b"".join(pieces)
                    self._skip_trailers()
                    return
            if pieces:
                yield b"".join(pieces)
            reader.more()

    def _skip_trailers(self) -> None:
        reader = self._reader
        while True:
            while (end := reader.buffer.find(b"\r\n")) < 0:
                if len(reader.buffer) > MAX_HEAD_BYTES:
                    raise httpx2.RemoteProtocolError("The response's trailers are too long.")
                reader.more()
            line, reader.buffer = reader.buffer[:end], reader.buffer[end + 2:]
            if not line:
                return


# httpcore2's errors, each mapped to httpx2's of the same name as httpx2's own transport maps them: the SDK
# tells a timeout from a failed connection by them.
_HTTPCORE_ERRORS = (httpcore2.TimeoutException, httpcore2.NetworkError, httpcore2.ProtocolError,
                    httpcore2.UnsupportedProtocol, httpcore2.ProxyError)


class _mapped_errors:
    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if not isinstance(exc, _HTTPCORE_ERRORS):
            return False
        raise getattr(httpx2, type(exc).__name__, httpx2.TransportError)(str(exc)) from exc
