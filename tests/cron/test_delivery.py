"""Delivering a job's final reply to a webhook (a local HTTP server on a loopback address of its own).

Webhooks to non-public addresses are refused unless the operator allows the range. The receiver here
listens on WEBHOOK_HOST, and only that one address is allowed, through BEAMCLAW_OUTBOUND_ALLOW_CIDRS (set in tests/conftest.py) in the
environment the worker and gateway of this test session start with (they copy os.environ when they
start, which is after collection). Every other loopback address stays refused, as the web_fetch tests and
tests/security/test_outbound_delivery.py check against the same processes.
"""

import hashlib
import hmac
import json
from http.server import BaseHTTPRequestHandler

import pytest

from cron.delivery import DeliveryError, DeliveryTargetError, deliver_parse, webhook_send
from cron.models import CronRun
from tests.conftest import WEBHOOK_HOST, http_server, wait_until
from tests.cron.conftest import WebhookServer, finished
from tests.cron.test_api import job_body


@pytest.fixture
def webhook():
    """A receiver on WEBHOOK_HOST; `statuses` scripts the answers (then 200). Answers other than 200 carry
    a body the gateway must never show to the tenant."""
    state = WebhookServer(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            state.received.append({"headers": dict(self.headers), "body": json.loads(body)})
            status = state.statuses.pop(0) if state.statuses else 200
            self.send_response(status)
            self.end_headers()
            self.wfile.write(b"ok" if status == 200 else b"internal detail: db password is hunter2")

        def log_message(self, *args):
            pass

    with http_server(Handler, WEBHOOK_HOST) as server:
        state.url = f"http://{WEBHOOK_HOST}:{server.server_address[1]}/hook"
        yield state
    server.shutdown()
    server.server_close()


def delivered(cron_run_id, timeout: float = 20) -> CronRun:
    return wait_until(
        lambda: CronRun.objects.filter(pk=cron_run_id, delivery_status__in=["delivered", "failed"]).first(),
        timeout=timeout, message="the delivery outcome",
    )


def test_the_final_reply_is_posted_to_the_webhook_signed(api, webhook):
    job = api.post("/jobs/", json=job_body(
        prompt="daily digest", session_target="isolated",
        deliver={"kind": "webhook", "url": webhook.url, "secret": "s3cret", "headers": {"X-Team": "ops"}},
    )).json()
    assert job["deliver"] == {"kind": "webhook", "url": webhook.url, "secret": "********", "headers": {"X-Team": "ops"}}
    cron_run_id = api.post(f"/jobs/{job['id']}/run/").json()["id"]
    outcome = delivered(cron_run_id)
    assert (outcome.delivery_status, outcome.delivery_attempts, outcome.delivery_error) == ("delivered", 1, "")
    [request] = webhook.received
    body = request["body"]
    assert body["text"] == "Echo: daily digest" and body["status"] == "succeeded"
    assert (body["job"], body["job_name"], body["cron_run"]) == (job["id"], "morning report", cron_run_id)
    assert body["run_id"] == str(outcome.run_id) and body["agent"] == "assistant"
    assert request["headers"]["X-BeamClaw-Delivery"] == f"cron-run-{cron_run_id}"
    assert request["headers"]["X-Team"] == "ops"
    raw = json.dumps(body).encode()
    assert request["headers"]["X-BeamClaw-Signature"] == "sha256=" + hmac.new(b"s3cret", raw, hashlib.sha256).hexdigest()
    history = api.get(f"/jobs/{job['id']}/runs/").json()["results"][0]
    assert history["delivery_status"] == "delivered" and history["delivered_at"]


def test_transient_failures_are_retried_with_backoff(api, webhook):
    webhook.statuses = [503, 500]
    job = api.post("/jobs/", json=job_body(session_target="isolated", deliver=webhook.url)).json()
    outcome = delivered(api.post(f"/jobs/{job['id']}/run/").json()["id"])
    assert outcome.delivery_status == "delivered" and outcome.delivery_attempts == 3
    assert len(webhook.received) == 3
    assert len({r["headers"]["X-BeamClaw-Delivery"] for r in webhook.received}) == 1  # one delivery, retried


def test_a_permanent_failure_is_recorded_without_retrying(api, webhook):
    webhook.statuses = [404]
    job = api.post("/jobs/", json=job_body(session_target="isolated", deliver=webhook.url)).json()
    outcome = delivered(api.post(f"/jobs/{job['id']}/run/").json()["id"])
    assert (outcome.delivery_status, outcome.delivery_attempts) == ("failed", 1)
    assert outcome.delivery_error == "HTTP 404", "the status only: the receiver's body is not shown"
    assert outcome.status == "succeeded"  # the run itself went fine


def test_a_failed_run_is_delivered_with_its_error(api, webhook):
    job = api.post("/jobs/", json=job_body(session_target="isolated", prompt="[[status=400]] no", deliver=webhook.url)).json()
    cron_run = finished(api.post(f"/jobs/{job['id']}/run/").json()["id"])
    assert delivered(cron_run.pk).delivery_status == "delivered"
    body = webhook.received[0]["body"]
    assert body["status"] == "failed" and body["error"] == cron_run.error != "" and body["text"] == ""


def test_private_targets_are_refused_unless_the_operator_allows_their_range(settings):
    settings.BEAMCLAW_OUTBOUND = {"ALLOW_CIDRS": []}
    with pytest.raises(DeliveryTargetError, match="127.0.0.1 is a loopback address.*BEAMCLAW_OUTBOUND_ALLOW_CIDRS"):
        deliver_parse("http://127.0.0.1:9/hook")
    with pytest.raises(DeliveryTargetError, match="private"):
        deliver_parse("http://10.1.2.3/hook")
    with pytest.raises(DeliveryError, match="localhost is not a public address") as err:
        webhook_send(target={"url": "http://localhost:9/hook"}, payload={}, delivery_id="x")
    assert err.value.transient is False
    settings.BEAMCLAW_OUTBOUND = {"ALLOW_CIDRS": ["10.0.0.0/8"]}
    assert deliver_parse("http://10.1.2.3/hook")["url"] == "http://10.1.2.3/hook"
    with pytest.raises(DeliveryTargetError, match="link-local"):
        deliver_parse({"url": "http://[fe80::1]/hook"})
