"""Daphne's TCP writes go to the kernel at once when nothing waits (beamclaw_project/daphne_hardening.py, 8).

Real Twisted connections over a real socket pair; the reactor only records what the connection asks it to
watch, so each test can say whether a write waited for the event loop's next turn. What the whole stack
does with it (every streamed response, WebSocket frame and error body) the gateway's tests cover.
"""

import socket

import pytest
from twisted.internet import tcp

from beamclaw_project import daphne_hardening


class RecordingReactor:
    """What a connection asks of the reactor: to be told when its socket can take more bytes."""

    def __init__(self):
        self.writers = set()

    def addWriter(self, writer):
        self.writers.add(writer)

    def removeWriter(self, writer):
        self.writers.discard(writer)

    def removeReader(self, reader):
        pass


@pytest.fixture
def connection():
    daphne_hardening.apply()
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    peer.settimeout(5)
    reactor = RecordingReactor()
    conn = tcp.Connection(ours, protocol=None, reactor=reactor)
    conn.connected = True
    yield conn, peer, reactor
    ours.close()
    peer.close()


def received(peer: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        data += peer.recv(size - len(data))
    return data


def test_a_write_with_nothing_waiting_reaches_the_socket_at_once(connection):
    conn, peer, reactor = connection
    conn.write(b"data: one\n\n")
    conn.writeSequence([b"3\r\n", b"two", b"\r\n"])
    assert received(peer, 19) == b"data: one\n\n3\r\ntwo\r\n"
    assert not reactor.writers  # nothing was left for the next turn


def test_what_the_kernel_does_not_take_is_sent_later_and_in_order(connection):
    conn, peer, reactor = connection
    conn.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    big = bytes(range(256)) * 8192  # 2 MiB: more than the socket buffers hold
    conn.write(big)
    assert conn in reactor.writers  # the rest waits for the socket
    # Written while the rest waits: it must not overtake it.
    conn.write(b"after")
    conn.writeSequence([b"and ", b"last"])
    got = b""
    expected = big + b"afterand last"
    while len(got) < len(expected):
        if conn in reactor.writers:
            conn.doWrite()  # what the reactor does once the socket can take more
        got += peer.recv(65536)
    assert got == expected
    assert not reactor.writers


def test_a_closing_connection_keeps_twisteds_order(connection):
    conn, peer, reactor = connection
    conn.disconnecting = True  # loseConnection() was called: Twisted writes what waits, then closes
    conn.write(b"last words")
    assert conn in reactor.writers
    conn.doWrite()
    assert received(peer, 10) == b"last words"


def test_tls_connections_write_through_their_tls_layer(connection):
    conn, peer, reactor = connection
    written = []
    conn.TLS = True
    conn.protocol = type("TLSProtocol", (), {"write": lambda self, data: written.append(data)})()
    conn.write(b"secret")
    assert written == [b"secret"]  # encrypted by the TLS layer, never sent in the clear
    peer.setblocking(False)
    with pytest.raises(BlockingIOError):
        peer.recv(10)


def test_an_aborted_connection_sends_nothing_more(connection):
    conn, peer, reactor = connection
    conn._aborting = True  # abortConnection() was called: Twisted drops what comes after
    conn.write(b"too late")
    peer.setblocking(False)
    with pytest.raises(BlockingIOError):
        peer.recv(10)
