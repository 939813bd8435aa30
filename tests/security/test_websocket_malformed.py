"""Malformed WebSocket traffic: each gets a clear error frame or close code, and the gateway (and, where the
socket survives, the socket) keeps answering."""

import json

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from sessions.consumers import MAX_FRAME_BYTES
from tests.sessions.test_websocket import WS


def ws_url(live: str, path: str) -> str:
    return live.replace("http://", "ws://") + path


def assert_gateway_answers(live, tenant):
    client = WS(live, tenant.api_key)
    try:
        assert client.call("health")["ok"]
    finally:
        client.close()


@pytest.mark.parametrize("path", ["/ws/foo", "/v1/realtime", "/wsx", "/", "/ws/ws/"])
def test_unknown_websocket_paths_are_404_at_the_handshake(live, tenant, path):
    with pytest.raises(InvalidStatus) as refused:
        connect(ws_url(live, path), open_timeout=10)
    response = refused.value.response
    assert response.status_code == 404
    assert response.headers["Content-Type"] == "application/json"
    error = json.loads(response.body)["error"]
    assert error["code"] == "not_found" and path in error["message"] and "/ws/" in error["message"]
    assert_gateway_answers(live, tenant)


def test_ws_without_the_slash_is_the_gateway(live, tenant):
    conn = connect(ws_url(live, "/ws"), open_timeout=10)
    try:
        conn.send(json.dumps({"type": "req", "id": "1", "method": "connect", "params": {"token": tenant.api_key}}))
        reply = json.loads(conn.recv(timeout=20))
        assert reply["id"] == "1" and reply["ok"], reply
    finally:
        conn.close()


@pytest.mark.parametrize(
    "frame",
    [
        "[" * 10_000 + "]" * 10_000,
        '{"type": "req", "id": "deep", "method": "health", "params": ' + '{"a":' * 10_000 + "1" + "}" * 10_001,
        '{"type": "req", "id": "deep", "method": "health", "params": {"x": ' + "[" * 200 + "]" * 200 + "}}",
    ],
)
def test_deeply_nested_frame_gets_an_error_and_the_socket_keeps_working(live, tenant, frame):
    client = WS(live, tenant.api_key)
    try:
        client.send(frame)
        reply = client.recv()
        assert reply["type"] == "res" and reply["ok"] is False, reply
        assert reply["error"]["code"] == "bad_frame" and "nested deeper than 100 levels" in reply["error"]["message"]
        assert client.call("health")["ok"], "the same socket still answers"
    finally:
        client.close()


def test_deeply_nested_first_frame_is_refused_like_any_non_connect(live):
    client = WS(live)
    client.send("[" * 10_000 + "]" * 10_000)
    assert client.recv()["error"]["code"] == "connect_required"
    with pytest.raises(ConnectionClosed) as closed:
        client.recv()
    assert closed.value.rcvd.code == 4400


def test_frame_over_the_gateway_limit_closes_with_1009_and_says_why(live, tenant):
    client = WS(live, tenant.api_key)
    frame = json.dumps({"type": "req", "id": "big", "method": "health", "params": {"pad": "x" * MAX_FRAME_BYTES}})
    client.send(frame)
    reply = client.recv()
    assert reply["ok"] is False and reply["error"]["code"] == "frame_too_large"
    assert str(MAX_FRAME_BYTES) in reply["error"]["message"]
    with pytest.raises(ConnectionClosed) as closed:
        client.recv()
    assert closed.value.rcvd.code == 1009 and closed.value.rcvd.reason.startswith("Frame larger than")
    assert_gateway_answers(live, tenant)


def test_ten_megabyte_frame_gets_a_1009_close_frame_not_a_dropped_connection(live, tenant):
    conn = connect(ws_url(live, "/ws/"), open_timeout=10, max_size=None)
    try:
        conn.send(json.dumps({"type": "req", "id": "1", "method": "connect", "params": {"token": tenant.api_key}}))
        assert json.loads(conn.recv(timeout=20))["ok"]
        try:
            conn.send("x" * (10 * 1024 * 1024))
        except ConnectionClosed:
            pass  # the server may close before the client has finished writing; the close code tells why
        with pytest.raises(ConnectionClosed) as closed:
            conn.recv(timeout=20)
        assert closed.value.rcvd is not None, "the server sent a close frame"
        assert closed.value.rcvd.code == 1009 and "exceeds payload limit" in closed.value.rcvd.reason
    finally:
        conn.close()
    assert_gateway_answers(live, tenant)
