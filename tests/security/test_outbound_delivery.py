"""Security finding 2, cron webhooks: no delivery to the gateway's own network, no response body shown to
the tenant, and one error text whatever state the target port is in.

The worker and gateway of the test session allow only tests.cron.test_delivery.WEBHOOK_HOST (see there);
the "internal service" below listens on 127.0.0.1, which stays refused.
"""

import json
import socket
import threading

import pytest

from cron.delivery import NO_ANSWER, DeliveryError, webhook_send
from tests.conftest import free_port, http_server
from tests.cron.conftest import api  # noqa: F401 - the fixture: a client on the live gateway as a fresh tenant
from tests.cron.test_api import job_body
from tests.cron.test_delivery import delivered, webhook  # noqa: F401 - the fixture, on WEBHOOK_HOST
from tests.security.conftest import PeerHandler


class _Internal(PeerHandler):
    def do_GET(self):
        self.server.hits.append(self.path)
        self.answer(body=b'{"status": "ok", "internal": true}')

    do_POST = do_GET


@pytest.fixture
def internal_service():
    """Something on the gateway host's loopback, like its own /health."""
    with http_server(_Internal) as server:
        yield server


def test_a_webhook_on_the_gateways_loopback_is_refused_when_saved_and_when_delivered(api, internal_service):  # noqa: F811
    port = internal_service.server_address[1]
    saved = api.post("/jobs/", json=job_body(session_target="isolated", deliver=f"http://127.0.0.1:{port}/health"))
    assert saved.status_code == 400
    assert "127.0.0.1 is a loopback address" in saved.text and "BEAMCLAW_OUTBOUND_ALLOW_CIDRS" in saved.text
    # A name is only known to point inside when it is resolved, before each attempt.
    job = api.post("/jobs/", json=job_body(session_target="isolated", deliver=f"http://localhost:{port}/health"))
    assert job.status_code == 201, job.text
    outcome = delivered(api.post(f"/jobs/{job.json()['id']}/run/").json()["id"])
    assert (outcome.delivery_status, outcome.delivery_attempts) == ("failed", 1), "a refusal is not retried"
    assert outcome.delivery_error.startswith("refused: localhost is not a public address (loopback)")
    assert "127.0.0.1" not in outcome.delivery_error, "where an internal name points is not shown"
    assert internal_service.hits == [], "nothing reached the internal service"


def test_the_receivers_body_is_never_shown_to_the_tenant(api, webhook):  # noqa: F811
    webhook.statuses = [403]
    job = api.post("/jobs/", json=job_body(session_target="isolated", deliver=webhook.url)).json()
    cron_run_id = api.post(f"/jobs/{job['id']}/run/").json()["id"]
    assert delivered(cron_run_id).delivery_status == "failed"
    history = api.get(f"/jobs/{job['id']}/runs/").json()["results"][0]
    assert history["delivery_error"] == "HTTP 403"
    assert "hunter2" not in json.dumps(api.get(f"/jobs/{job['id']}/runs/").json())


class _PortStates:
    """Four ports on 127.0.0.1: closed, open but closing at once, open and speaking another protocol,
    open and silent."""

    def __init__(self):
        self.closed = free_port()
        self._sockets = []
        self.hangs_up = self._listen(lambda conn: conn.close())
        self.other_protocol = self._listen(lambda conn: (conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n"), conn.close()))
        silent = socket.socket()
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes the handshake; nobody ever reads or answers
        self._sockets.append(silent)
        self.silent = silent.getsockname()[1]

    def _listen(self, handle) -> int:
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        self._sockets.append(server)

        def serve():
            while True:
                try:
                    conn, _ = server.accept()
                except OSError:
                    return
                handle(conn)

        threading.Thread(target=serve, daemon=True).start()
        return server.getsockname()[1]

    def close(self):
        for sock in self._sockets:
            sock.close()


@pytest.fixture
def port_states():
    states = _PortStates()
    yield states
    states.close()


def test_errors_do_not_tell_an_open_port_from_a_closed_one(settings, port_states, caplog):
    settings.BEAMCLAW_OUTBOUND = {"ALLOW_CIDRS": ["127.0.0.1/32"]}
    # This test is about what a timeout looks like, so it shortens the delivery timeout for itself only.
    settings.BEAMCLAW_CRON = {**settings.BEAMCLAW_CRON, "DELIVERY_TIMEOUT_SECONDS": 1.0}
    messages = {}
    for state in ("closed", "hangs_up", "other_protocol", "silent"):
        port = getattr(port_states, state)
        with pytest.raises(DeliveryError) as failure:
            webhook_send(target={"url": f"http://127.0.0.1:{port}/hook"}, payload={"x": 1}, delivery_id=f"probe-{state}")
        assert failure.value.transient is True, state
        messages[state] = failure.value.message
    assert set(messages.values()) == {NO_ANSWER}, messages
    assert all(f"probe-{state}" in caplog.text for state in messages), "the details go to the server log"
