"""The model endpoint's HTTP/1.1 transport (sessions/providers/http1.py), met as the provider meets it: the
real SDK, against servers written byte by byte here, so every framing a server may use is exercised, each
split across network reads at every byte."""

import datetime
import gzip
import ipaddress
import json
import socket
import ssl
import threading
import uuid
from contextlib import contextmanager

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sessions.providers.anthropic import AnthropicProvider, sdk_client
from sessions.providers.base import CompletionRequest, ProviderError
from sessions.providers.http1 import Http1Transport

REPLY_PIECES = ["Hello", ", wor", "ld — ", "ünïcode ✓"]


def _sse(events: list[dict]) -> bytes:
    return b"".join(b"event: %s\ndata: %s\n\n" % (event["type"].encode(), json.dumps(event).encode())
                    for event in events)


def _stream_events(pieces=REPLY_PIECES) -> list[dict]:
    return [
        {"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "content": [],
                                               "model": "claude-test", "usage": {"input_tokens": 7, "output_tokens": 1}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "ping"},
        *({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}
          for piece in pieces),
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 9}},
        {"type": "message_stop"},
    ]


WHOLE_BODY = json.dumps({
    "id": "msg_2", "type": "message", "role": "assistant", "model": "claude-test", "stop_reason": "end_turn",
    "content": [{"type": "text", "text": "".join(REPLY_PIECES)}], "usage": {"input_tokens": 7, "output_tokens": 9},
}).encode()


def _chunked(body: bytes, size: int = 7, *, extension: bytes = b"", trailers: bytes = b"") -> bytes:
    pieces = [body[at:at + size] for at in range(0, len(body), size)]
    return b"".join(b"%x%s\r\n%s\r\n" % (len(piece), extension, piece) for piece in pieces) + b"0\r\n" + trailers + b"\r\n"


def _read_request(conn: socket.socket, buffer: bytes = b"") -> tuple[bytes, bytes, bytes] | None:
    """(head, body, what follows) of the next request on `conn`, or None once the client closed it."""
    while b"\r\n\r\n" not in buffer:
        data = conn.recv(65536)
        if not data:
            return None
        buffer += data
    head, _, rest = buffer.partition(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(rest) < length:
        rest += conn.recv(65536)
    return head, rest[:length], rest[length:]


@contextmanager
def scripted_server(responses, *, bytewise: bool = True, close_after: bool = False, tls: ssl.SSLContext = None):
    """A server answering the requests on each connection with `responses(head, body)` in turn (bytes), one
    byte per send when `bytewise`; closes each connection after one answer when `close_after`. Records each
    connection's request heads in `server.connections`."""
    listener = socket.create_server(("127.0.0.1", 0))
    server = type("Server", (), {"connections": [], "url": f"http://127.0.0.1:{listener.getsockname()[1]}"})()

    def serve_one(conn):
        heads = []
        server.connections.append(heads)
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            buffer = b""
            while (request := _read_request(conn, buffer)) is not None:
                head, body, buffer = request
                heads.append(head)
                answer = responses(head, body)
                for at in range(len(answer)) if bytewise else [0]:
                    conn.sendall(answer[at:at + 1] if bytewise else answer)
                if close_after:
                    return

    def accept():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            if tls is not None:
                try:
                    conn = tls.wrap_socket(conn, server_side=True)
                except (ssl.SSLError, OSError):
                    conn.close()
                    continue
            threading.Thread(target=serve_one, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield server
    finally:
        listener.close()


def _ask(monkeypatch, base_url: str, *, whole_reply: bool = False, directives: str = ""):
    monkeypatch.setenv("ANTHROPIC_BASE_URL", base_url)
    request = CompletionRequest(
        model="claude-test", system="", max_tokens=100, whole_reply=whole_reply,
        messages=[{"role": "user", "content": f"hi {directives}"}],
        # A key of its own: the provider keeps a client per key, built with the base URL of its time.
        api_key=f"http1-{uuid.uuid4().hex}",
    )
    texts: list[str] = []
    completion = AnthropicProvider().stream(request, on_text=texts.append, should_abort=lambda: False)
    return completion, texts, request


def _head(status: bytes = b"200 OK", *headers: bytes) -> bytes:
    return b"HTTP/1.1 " + status + b"\r\n" + b"".join(header + b"\r\n" for header in headers) + b"\r\n"


def test_the_provider_speaks_through_it(monkeypatch, fake_llm):
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.setenv("NO_PROXY", "example.com")  # a NO_PROXY alone names no proxy
    _, _, request = _ask(monkeypatch, fake_llm, directives="[[deltas=3]]")
    assert isinstance(sdk_client(request.api_key)[0]._client._transport, Http1Transport)


@pytest.mark.parametrize("framing", ["chunked", "chunked with extensions and trailers", "until close"])
def test_a_streamed_reply_split_at_every_byte_arrives_whole(monkeypatch, framing):
    body = _sse(_stream_events())
    answer = {
        "chunked": _head(b"200 OK", b"Content-Type: text/event-stream", b"Transfer-Encoding: chunked") + _chunked(body),
        "chunked with extensions and trailers": _head(b"200 OK", b"Content-Type: text/event-stream",
                                                      b"Transfer-Encoding: chunked")
        + _chunked(body, 5, extension=b";name=value", trailers=b"X-Checksum: 1\r\n"),
        "until close": b"HTTP/1.0 200 OK\r\nContent-Type: text/event-stream\r\n\r\n" + body,
    }[framing]
    with scripted_server(lambda head, _: answer, close_after=framing == "until close") as server:
        completion, texts, _ = _ask(monkeypatch, server.url)
    assert completion.text == "".join(REPLY_PIECES)
    assert "".join(texts) == completion.text
    assert (completion.stop_reason, completion.input_tokens, completion.output_tokens) == ("end_turn", 7, 9)


@pytest.mark.parametrize("encoding", ["identity", "gzip"])
def test_a_whole_reply_split_at_every_byte_arrives_whole(monkeypatch, encoding):
    body = gzip.compress(WHOLE_BODY) if encoding == "gzip" else WHOLE_BODY
    answer = (_head(b"100 Continue") + _head(b"200 OK", b"Content-Type: application/json",
                                             b"Content-Encoding: %s" % encoding.encode(),
                                             b"Content-Length: %d" % len(body)) + body)
    with scripted_server(lambda head, _: answer) as server:
        completion, texts, _ = _ask(monkeypatch, server.url, whole_reply=True)
    assert texts == ["".join(REPLY_PIECES)]
    assert completion.stop_reason == "end_turn"


def test_requests_reuse_one_connection_and_leave_one_the_server_closed(monkeypatch):
    """Kept alive between calls; a connection the server closed while idle is not used again (the call goes
    on a new one, with no error), nor one whose answer said `Connection: close`."""
    whole = _head(b"200 OK", b"Content-Type: application/json", b"Content-Length: %d" % len(WHOLE_BODY)) + WHOLE_BODY
    closing = (_head(b"200 OK", b"Content-Type: application/json", b"Connection: close",
                     b"Content-Length: %d" % len(WHOLE_BODY)) + WHOLE_BODY)
    with scripted_server(lambda head, _: closing if b"close-me" in head else whole, bytewise=False) as server:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
        request = CompletionRequest(model="claude-test", system="", max_tokens=100, whole_reply=True,
                                    messages=[{"role": "user", "content": "hi"}], api_key=f"reuse-{uuid.uuid4().hex}")
        client = sdk_client(request.api_key)[0]

        def ask(**extra):
            return client.messages.create(model="claude-test", max_tokens=10, messages=request.messages, **extra)

        assert [ask().content[0].text for _ in range(3)] == ["".join(REPLY_PIECES)] * 3
        assert [len(heads) for heads in server.connections] == [3]
        ask(extra_headers={"X-Test": "close-me"})
        ask()
        assert [len(heads) for heads in server.connections] == [4, 1]

    with scripted_server(lambda head, _: whole, bytewise=False, close_after=True) as server:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
        request = CompletionRequest(model="claude-test", system="", max_tokens=100, whole_reply=True,
                                    messages=[{"role": "user", "content": "hi"}], api_key=f"idle-{uuid.uuid4().hex}")
        client = sdk_client(request.api_key)[0]
        first = ask()
        # The server closed the first connection after its answer; wait until the client's side can tell.
        idle_stream = client._client._transport._idle[("http", "127.0.0.1", int(server.url.rsplit(":", 1)[1]))][0][0]
        idle_socket = idle_stream.get_extra_info("socket")
        idle_socket.settimeout(10)
        assert idle_socket.recv(1, socket.MSG_PEEK) == b""
        assert ask().content == first.content
        assert [len(heads) for heads in server.connections] == [1, 1]


@pytest.mark.parametrize("answer, kind, says", [
    (b"HTTP/1.1 2OO OK\r\n\r\n", "connection", "Malformed status line"),
    (_head(b"200 OK", b"Content-Type: text/event-stream", b"Transfer-Encoding: chunked") + b"zz\r\n", "connection",
     "Malformed chunk size"),
    (_head(b"200 OK", b"Content-Type: text/event-stream", b"Transfer-Encoding: chunked") + b"0x1f\r\n", "connection",
     "Malformed chunk size"),
    (_head(b"200 OK", b"Content-Type: text/event-stream", b"Transfer-Encoding: chunked")
     + _chunked(_sse(_stream_events()[:2]))[:-5], "connection", "Server disconnected"),
    (_head(b"529 Overloaded", b"Content-Type: application/json", b"Content-Length: 74")
     + b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded."}}', "overloaded", "Overloaded."),
])
def test_a_broken_answer_is_a_clear_provider_error(monkeypatch, answer, kind, says):
    with scripted_server(lambda head, _: answer, close_after=True) as server:
        with pytest.raises(ProviderError) as raised:
            _ask(monkeypatch, server.url)
    assert raised.value.kind == kind
    assert raised.value.retryable
    assert says in raised.value.message


def _certificate(tmp_path) -> tuple[ssl.SSLContext, str]:
    """A server context with a certificate for 127.0.0.1, and the file of its authority (itself)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "beamclaw test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return context, str(cert_file)


def test_https_checks_the_servers_certificate(monkeypatch, tmp_path):
    server_context, authority = _certificate(tmp_path)
    answer = _head(b"200 OK", b"Content-Type: text/event-stream", b"Transfer-Encoding: chunked") + _chunked(
        _sse(_stream_events()), 300)
    with scripted_server(lambda head, _: answer, bytewise=False, tls=server_context) as server:
        https_url = server.url.replace("http://", "https://")
        with pytest.raises(ProviderError) as raised:
            _ask(monkeypatch, https_url)
        assert raised.value.kind == "connection"
        assert "CERTIFICATE_VERIFY_FAILED" in raised.value.message

        monkeypatch.setenv("SSL_CERT_FILE", authority)
        completion, _, _ = _ask(monkeypatch, https_url)
    assert completion.text == "".join(REPLY_PIECES)


def test_a_proxy_in_the_environment_is_used(monkeypatch):
    """Our transport does not speak to proxies: with one set, the SDK's own transport takes the call, through
    the proxy."""
    answer = _head(b"200 OK", b"Content-Type: text/event-stream", b"Transfer-Encoding: chunked") + _chunked(
        _sse(_stream_events()), 300)
    with scripted_server(lambda head, _: answer, bytewise=False) as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        completion, _, request = _ask(monkeypatch, "http://model.invalid:8080")
    assert completion.text == "".join(REPLY_PIECES)
    assert proxy.connections[0][0].startswith(b"POST http://model.invalid:8080/v1/messages HTTP/1.1")
    assert not isinstance(sdk_client(request.api_key)[0]._client._transport, Http1Transport)
