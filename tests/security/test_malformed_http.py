"""Malformed HTTP: oversized headers and out-of-range resume points get a clear 4xx with a JSON message, and
the gateway keeps answering afterwards."""

import socket
from urllib.parse import urlsplit

import httpx

from tests.sessions.test_rest_api import read_sse


def raw_exchange(live: str, request: bytes) -> bytes:
    """Send bytes no HTTP client would send, and read the whole answer."""
    url = urlsplit(live)
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def assert_still_answering(live, tenant):
    assert httpx.get(f"{live}/v1/models", headers=tenant.headers, timeout=10).status_code == 200
    assert httpx.get(f"{live}/api/agents/", headers=tenant.headers, timeout=10).status_code == 200


def test_a_60kb_authorization_header_is_431_with_a_json_message(live, tenant):
    response = httpx.get(f"{live}/v1/models", headers={"Authorization": "Bearer " + "x" * 60_000}, timeout=10)
    assert response.status_code == 431, response.text
    error = response.json()["error"]
    assert error["code"] == "request_header_too_large" and "16 KiB" in error["message"]
    assert_still_answering(live, tenant)


def test_headers_over_16kb_together_are_431(live, tenant):
    headers = {f"X-Filler-{i}": "y" * 4000 for i in range(6)}
    response = httpx.get(f"{live}/api/agents/", headers={**tenant.headers, **headers}, timeout=10)
    assert response.status_code == 431, response.text
    assert response.json()["error"]["code"] == "request_headers_too_large"
    assert_still_answering(live, tenant)


def test_an_oversized_header_on_a_websocket_handshake_is_431(live, tenant):
    url = urlsplit(live)
    request = (
        "GET /ws/ HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nCookie: {cookie}\r\n\r\n"
    ).format(host=url.netloc, cookie="c" * 40_000)
    answer = raw_exchange(live, request.encode())
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert b'"request_header_too_large"' in answer
    assert_still_answering(live, tenant)


def test_a_malformed_request_line_is_400_with_a_json_message(live, tenant):
    answer = raw_exchange(live, b"NONSENSE\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert b'"malformed_http_request"' in answer
    assert_still_answering(live, tenant)


def test_an_out_of_range_last_event_id_is_400_and_streams_keep_working(live, tenant):
    with httpx.Client(base_url=f"{live}/api", headers=tenant.headers, timeout=30) as api:
        session_id = api.post("/sessions/", json={"agent": "assistant"}).json()["id"]
        run_id = api.post(f"/sessions/{session_id}/messages/", json={"content": "resume me"}).json()["run"]["id"]
        events = read_sse(api, f"/runs/{run_id}/events/")
        assert events[-1]["event"] == "run.completed"

        for resume_from in [str(2**64), str(2**63), "9" * 30, "-1", "²", "1e3", "0x10", "3.0"]:
            for source in ({"headers": {"Last-Event-ID": resume_from.encode()}}, {"params": {"after": resume_from}}):
                response = api.get(f"/runs/{run_id}/events/", **source)
                assert response.status_code == 400, (resume_from, source, response.text)
                assert "integer from 0 to 9223372036854775807" in response.json()["detail"]

        assert read_sse(api, f"/runs/{run_id}/events/", headers={"Last-Event-ID": "1"}) == events[1:]
        with api.stream("GET", f"/runs/{run_id}/events/", headers={"Last-Event-ID": str(2**63 - 1)}) as largest:
            assert largest.status_code == 200, "the largest seq is still a valid resume point"
    assert_still_answering(live, tenant)


def test_head_on_the_event_stream_answers_like_get_without_a_body(live, tenant):
    with httpx.Client(base_url=f"{live}/api", headers=tenant.headers, timeout=30) as api:
        session = api.post("/sessions/", json={"agent": "assistant"}).json()["id"]
        run = api.post(f"/sessions/{session}/messages/", json={"content": "head"}).json()["run"]["id"]
        head = api.head(f"/runs/{run}/events/")
        assert head.status_code == 200 and head.headers["content-type"].startswith("text/event-stream")
        assert api.head("/runs/00000000-0000-0000-0000-000000000000/events/").status_code == 404
        wrong = api.put(f"/runs/{run}/events/")
        assert wrong.status_code == 405 and wrong.headers["Allow"] == "GET, HEAD"


def test_a_multipart_body_twisted_cannot_parse_is_answered_by_the_api_itself(live, tenant):
    # Daphne hands the raw body to the application; Twisted no longer parses POST forms on the way
    # (daphne_hardening.py, 7), so what is wrong with the upload is said by the API's own parser.
    response = httpx.post(
        f"{live}/api/skills/", content=b"a multipart body needs a boundary",
        headers={**tenant.headers, "Content-Type": "multipart/form-data"}, timeout=10,
    )
    assert response.status_code == 400, response.text
    assert "malformed_http_request" not in response.text
    assert "ultipart" in response.json()["detail"], response.text
    assert_still_answering(live, tenant)
