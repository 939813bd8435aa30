"""Input that Daphne (Twisted and Autobahn underneath) refuses before the application sees it, refused cleanly.

Daphne offers no hooks for these, and a deployment runs the stock `daphne` command, so `asgi.py` applies
them when Daphne imports the application (before it builds its factories). Each one is checked by a test
that drives a real Daphne (tests/security/), so a Daphne, Twisted or Autobahn upgrade that moves the
internals shows up as a failing test rather than as a silent regression.

1. Request headers over Twisted's limits: 16 KiB for one line (`LineReceiver.MAX_LENGTH`) and 16 KiB for
   the request line and all headers together (`HTTPChannel.totalHeadersSize`). Twisted drops the
   connection without a word for one long line and sends a bare "400 Bad Request" for too much in total.
   Both now get 431 Request Header Fields Too Large with a JSON body naming the limit; other requests
   Twisted cannot parse get a JSON 400. The limits stay: no real client sends 16 KiB of headers (an API
   key is under 100 bytes), and they bound what one connection can make the server buffer.
2. WebSocket denial responses (the ASGI `websocket.http.response` extension, which Daphne lacks): the
   application may refuse a handshake with any HTTP status and body, where Daphne alone only knows 403.
   Unknown WebSocket paths use it to answer 404.
3. WebSocket messages over Daphne's size limit (`--websocket-max-message-size` and
   `--websocket-max-frame-size`, 1 MiB by default): Autobahn fails such a connection by dropping TCP
   (its `failByDrop` option), so the client sees a broken connection. With the option off it sends
   the close frame RFC 6455 intends, 1009 "message too big", with the reason.
4. Closing a WebSocket from the application: Daphne hands only the code to Autobahn's `sendClose`, which
   refuses RFC 6455's own codes (so the consumer's 1009 for an oversized frame raised, and the client got
   1011), and the ASGI close `reason` was dropped. Both now reach the client.
5. Graceful shutdown. On SIGTERM Daphne stops at once: every open response is cancelled and its client
   sees a broken connection. Now `web` drains first: it stops accepting connections (a second web
   process or the load balancer takes them), closes WebSockets with 1012 "service restart" so clients
   reconnect, marks the process draining (run event streams under /api/ end with a reconnect hint,
   EventSource resumes elsewhere with Last-Event-ID), and lets other responses (OpenAI streams) finish
   for up to BEAMCLAW["WEB_DRAIN_SECONDS"]. Responses still open then end themselves with a "server
   restarting" message (sessions/openai_api.py); whatever is left a moment later is cancelled as before.
6. The listen backlog. Daphne listens with Twisted's default backlog of 50: a burst of clients opening
   connections at once (a few hundred SDK clients starting together, a load balancer re-opening its
   pool) overflows the kernel's accept queue faster than the event loop accepts, and the overflow is
   dropped (5 of 300 simultaneous opens were lost). TCP endpoints now ask for LISTEN_BACKLOG (the kernel
   caps it at net.core.somaxconn), unless the endpoint description names a backlog itself.
7. POST bodies parsed twice. Twisted parses a POST's form body into `request.args` before Daphne sees the
   request: for every POST it parses the Content-Type header with the email package (~2% of the web
   process's CPU per chat completion), and a multipart body (a skill upload of megabytes) it parses whole,
   for nobody: Daphne hands the raw body to the application, whose parsers read it again. Requests are now
   made without that parsing, so a multipart body Twisted could not parse is answered by the API itself
   (the parser's own 400), not by a bare "malformed request".
8. Writes that wait for the next turn of the event loop. Twisted never writes to a socket when asked: it
   buffers the bytes, registers the socket for writability, and sends on the loop's next turn, then
   unregisters it. Two epoll_ctl calls and a loop turn per write; a streamed response writes once per
   text delta. A plain TCP connection with nothing waiting to be sent now hands the bytes to the kernel at
   once; what the kernel does not take, and every write while something waits, goes Twisted's way, so the
   order of bytes, flow control and closing are Twisted's. (A connection that turned to TLS with startTLS
   writes through its TLS layer as before; a TLS endpoint's layer hands its encrypted bytes to such a plain
   connection, which writes them at once like any others.)
"""

import json
import logging
import time
from http import HTTPStatus

from autobahn.util import encode_truncate
from autobahn.websocket.types import ConnectionDeny
from daphne import server as daphne_server
from daphne.http_protocol import WebRequest
from daphne.server import Server
from daphne.ws_protocol import WebSocketFactory, WebSocketProtocol
from twisted.internet import defer, tcp
from twisted.web.http import HTTPChannel

from beamclaw_project.infra.draining import DRAIN_TICK_SECONDS, drain_begin, drain_expire, drain_expired

logger = logging.getLogger(__name__)

DENIAL_EXTENSION = "websocket.http.response"
# Bytes of a refused request read and thrown away before the connection is cut regardless.
_DRAIN_LIMIT = 1024 * 1024


def error_body(message: str, code: str) -> bytes:
    """The JSON error both API styles understand: DRF's `detail` and OpenAI's `error` object."""
    error = {"message": message, "type": "invalid_request_error", "param": None, "code": code}
    return json.dumps({"detail": message, "error": error}).encode()


# --- 1. oversized or malformed HTTP requests -------------------------------------------------------


def _refuse_request(channel: HTTPChannel, status: int, message: str, code: str) -> None:
    if getattr(channel, "_beamclaw_refused", False):
        return
    channel._beamclaw_refused = True
    body = error_body(message, code)
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    channel.transport.write(head.encode("ascii") + body)
    # Closing while the client is still sending would reset the connection, and a reset can destroy the
    # answer before the client reads it. So stop parsing, read and discard the rest, and only half-close:
    # the client reads the answer, sees the end, and hangs up itself (or the channel's idle timeout does).
    drained = [0]

    def discard(data: bytes = b"") -> None:
        drained[0] += len(data)
        if drained[0] > _DRAIN_LIMIT:
            channel.transport.abortConnection()

    channel.lineReceived = discard
    channel.rawDataReceived = discard
    channel.setRawMode()
    if hasattr(channel.transport, "loseWriteConnection"):
        channel.transport.loseWriteConnection()
    else:
        channel.transport.loseConnection()


def _line_too_long(self: HTTPChannel, line: bytes) -> None:
    _refuse_request(
        self, 431, f"A request header (or the request line) is longer than {self.MAX_LENGTH // 1024} KiB.",
        "request_header_too_large",
    )


def _bad_request(self: HTTPChannel) -> None:
    if self._receivedHeaderSize > self.totalHeadersSize:
        _refuse_request(
            self, 431, f"The request line and headers together are larger than {self.totalHeadersSize // 1024} KiB.",
            "request_headers_too_large",
        )
    else:
        _refuse_request(self, 400, "The HTTP request is malformed.", "malformed_http_request")


# --- 2. WebSocket denial responses, and 4. closes with any code and a reason ---------------------------

_create_application = Server.create_application
_handle_reply = WebSocketProtocol.handle_reply
_send_http_error_response = WebSocketProtocol.sendHttpErrorResponse


def _create_application_with_extensions(self, protocol, scope):
    if scope.get("type") == "websocket":
        scope["extensions"] = {**scope.get("extensions", {}), DENIAL_EXTENSION: {}}
    return _create_application(self, protocol, scope)


def _handle_reply_with_denials(self: WebSocketProtocol, message):
    kind = message.get("type")
    if kind == "websocket.http.response.start" and self.state == self.STATE_CONNECTING:
        self._beamclaw_denial = {"status": int(message["status"]), "headers": message.get("headers", []), "body": []}
        return None
    denial = getattr(self, "_beamclaw_denial", None)
    if kind == "websocket.http.response.body" and denial is not None and hasattr(self, "handshake_deferred"):
        denial["body"].append(message.get("body", b""))
        if not message.get("more_body", False):
            # Autobahn answers a ConnectionDeny through sendHttpErrorResponse (below), which adds the body.
            self.handshake_deferred.errback(ConnectionDeny(code=denial["status"], reason=HTTPStatus(denial["status"]).phrase))
            del self.handshake_deferred
            self.server.protocol_disconnected(self)
        return None
    if kind == "websocket.close" and self.state == self.STATE_OPEN:
        reason = message.get("reason")
        # A close reason is at most 123 bytes of UTF-8 (RFC 6455 §5.5: 125 for the payload, 2 of them the code).
        self.sendCloseFrame(
            code=message.get("code") or 1000, reasonUtf8=encode_truncate(reason, 123) if reason else None, isReply=False
        )
        return None
    return _handle_reply(self, message)


def _send_http_error_response_with_body(self: WebSocketProtocol, code, reason, responseHeaders=None):
    denial = getattr(self, "_beamclaw_denial", None)
    if denial is None:
        return _send_http_error_response(self, code, reason, responseHeaders)
    body = b"".join(denial["body"])
    lines = [f"HTTP/1.1 {code} {reason}".encode("ascii")]
    lines += [bytes(name) + b": " + bytes(value) for name, value in denial["headers"]]
    lines += [f"Content-Length: {len(body)}".encode("ascii"), b"Connection: close"]
    self.sendData(b"\r\n".join(lines) + b"\r\n\r\n" + body)
    return None


# --- 3. oversized WebSocket messages -----------------------------------------------------------------

_factory_init = WebSocketFactory.__init__
CLOSE_HANDSHAKE_SECONDS = 5


def _factory_init_closing_cleanly(self, *args, **kwargs):
    _factory_init(self, *args, **kwargs)
    # After the close frame Autobahn waits closeHandshakeTimeout (1 s by default) for the client's, then
    # aborts the connection with a reset, which can discard the close frame before the client has read it.
    # A client refused in the middle of a large message answers only once it has written the rest (10 MiB
    # took longer than a second on a busy machine), so it gets CLOSE_HANDSHAKE_SECONDS.
    self.setProtocolOptions(failByDrop=False, closeHandshakeTimeout=CLOSE_HANDSHAKE_SECONDS)


# --- 5. graceful shutdown ----------------------------------------------------------------------------

CLOSE_SERVICE_RESTART = 1012
_DRAIN_POLL_SECONDS = 0.2
# After the drain time, how long responses get to say the server is restarting (a few ticks of theirs).
_LAST_WORDS_SECONDS = 3 * DRAIN_TICK_SECONDS
LISTEN_BACKLOG = 4096
_server_from_string = daphne_server.serverFromString
_listen_success = Server.listen_success
_kill_all_applications = Server.kill_all_applications


def _server_from_string_with_backlog(reactor, description: str):
    kind = description.split(":", 1)[0]
    if kind in ("tcp", "tcp6") and "backlog=" not in description:
        description = f"{description}:backlog={LISTEN_BACKLOG}"
    return _server_from_string(reactor, description)


def _listen_success_keeping_port(self: Server, port):
    self._beamclaw_ports = [*getattr(self, "_beamclaw_ports", []), port]
    return _listen_success(self, port)


def _busy_applications(server: Server) -> int:
    return sum(
        1 for details in server.connections.values()
        if (instance := details.get("application_instance")) is not None and not instance.done()
    )


def _drain_then_kill(self: Server):
    """Daphne's "before shutdown" step, preceded by a drain (see 5. above)."""
    from django.conf import settings
    from twisted.internet import reactor  # Daphne's asyncio reactor, installed by the time this runs

    drain_begin()
    for port in getattr(self, "_beamclaw_ports", []):
        port.stopListening()
    for protocol in list(self.connections):
        if isinstance(protocol, WebSocketProtocol) and protocol.state == protocol.STATE_OPEN:
            protocol.sendCloseFrame(
                code=CLOSE_SERVICE_RESTART, reasonUtf8=b"The server is restarting: reconnect.", isReply=False
            )
    deadline = time.monotonic() + settings.BEAMCLAW["WEB_DRAIN_SECONDS"]
    logger.info("shutting down: draining %s open responses", _busy_applications(self))
    drained = defer.Deferred()

    def check():
        busy = _busy_applications(self)
        now = time.monotonic()
        if busy and now < deadline:
            reactor.callLater(_DRAIN_POLL_SECONDS, check)
            return
        if busy and not drain_expired():
            # Time is up: open responses end themselves with a "server restarting" message at their next
            # tick (DRAIN_TICK_SECONDS); give them a moment to, then cancel what is left.
            logger.info("drain time is up: telling %s open responses the server is restarting", busy)
            drain_expire()
            reactor.callLater(_DRAIN_POLL_SECONDS, check)
            return
        if busy and now < deadline + _LAST_WORDS_SECONDS:
            reactor.callLater(_DRAIN_POLL_SECONDS, check)
            return
        logger.info("drained (%s responses cut off)", busy)
        _kill_all_applications(self).chainDeferred(drained)

    check()
    return drained


# --- 7. POST bodies parsed twice ----------------------------------------------------------------------

_web_request_init = WebRequest.__init__


def _web_request_init_without_form_parsing(self: WebRequest, *args, **kwargs) -> None:
    _web_request_init(self, *args, **kwargs)
    # (Twisted's own switch: its Request reads it in requestReceived, once the body is in.)
    self._parsePOSTFormSubmission = False


# --- 8. writes that wait for the next turn of the event loop ------------------------------------------

_tcp_write = tcp.Connection.write


def _unsent_after_writing_at_once(connection: tcp.Connection, data: bytes) -> bytes:
    """Send `data` now if nothing else waits to be sent; what the kernel did not take (all of it if
    something waits, the connection is closing, or the send failed: Twisted's doWrite then finds the error
    and closes the connection as it would have)."""
    if (
        connection.TLS or not connection.connected or connection.disconnecting or connection._writeDisconnected
        or connection._aborting or connection._tempDataBuffer or connection.offset < len(connection.dataBuffer)
        # (a pull producer is asked for more by doWrite, which writing at once would skip)
        or (connection.producer is not None and not connection.streamingProducer)
    ):
        return data
    sent = connection.writeSomeData(data)
    if not isinstance(sent, int) or sent <= 0:
        return data
    return data[sent:]


def _write_at_once(self: tcp.Connection, data: bytes) -> None:
    if data and (data := _unsent_after_writing_at_once(self, data)):
        _tcp_write(self, data)


def _write_sequence_at_once(self: tcp.Connection, iovec) -> None:
    if data := _unsent_after_writing_at_once(self, b"".join(iovec)):
        _tcp_write(self, data)


_applied = False


def apply() -> None:
    """Install them all (once; importing the ASGI module twice must not wrap twice)."""
    global _applied
    if _applied:
        return
    _applied = True
    HTTPChannel.lineLengthExceeded = _line_too_long
    HTTPChannel._respondToBadRequestAndDisconnect = _bad_request
    Server.create_application = _create_application_with_extensions
    WebSocketProtocol.handle_reply = _handle_reply_with_denials
    WebSocketProtocol.sendHttpErrorResponse = _send_http_error_response_with_body
    WebSocketFactory.__init__ = _factory_init_closing_cleanly
    Server.listen_success = _listen_success_keeping_port
    Server.kill_all_applications = _drain_then_kill
    daphne_server.serverFromString = _server_from_string_with_backlog
    WebRequest.__init__ = _web_request_init_without_form_parsing
    tcp.Connection.write = _write_at_once
    tcp.Connection.writeSequence = _write_sequence_at_once
