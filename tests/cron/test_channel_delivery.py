"""Delivering a job's final reply through a channel account (`deliver: {"kind": "channel", ...}`): here a
webhook channel, whose callback is tests/conftest.py's callback_receiver on WEBHOOK_HOST (the one
non-public address the session's worker may reach; see there)."""

import hashlib
import hmac
import uuid

import pytest

from channels_app.accounts import channel_account_create, channel_account_update
from tests.conftest import WEBHOOK_HOST
from tests.cron.test_api import job_body
from tests.cron.test_delivery import delivered


@pytest.fixture
def channel(api, settings, callback_receiver):
    settings.BEAMCLAW_OUTBOUND = {"ALLOW_CIDRS": [f"{WEBHOOK_HOST}/32"]}
    return channel_account_create(
        tenant=api.tenant.tenant, kind="webhook", name=f"hook-{uuid.uuid4().hex[:6]}", agent=api.tenant.agent,
        config={"callback_url": callback_receiver.url},
    )


def test_a_job_delivers_to_a_webhook_channel_signed_with_the_channels_secret(api, channel, callback_receiver):
    deliver = {"kind": "channel", "channel": channel.pk, "to": "ops-room"}
    job = api.post("/jobs/", json=job_body(prompt="nightly digest", session_target="isolated", deliver=deliver))
    assert job.status_code == 201, job.text
    assert job.json()["deliver"] == deliver
    cron_run_id = api.post(f"/jobs/{job.json()['id']}/run/").json()["id"]
    outcome = delivered(cron_run_id)
    assert (outcome.delivery_status, outcome.delivery_attempts, outcome.delivery_error) == ("delivered", 1, "")
    [hit] = callback_receiver.hits
    body = hit["body"]
    assert (body["text"], body["to"], body["job"], body["cron_run"]) == ("Echo: nightly digest", "ops-room", job.json()["id"], cron_run_id)
    assert hit["headers"]["X-BeamClaw-Delivery"] == f"cron-run-{cron_run_id}"
    timestamp = hit["headers"]["X-BeamClaw-Timestamp"]
    expected = hmac.new(channel.secret.encode(), timestamp.encode() + b"." + hit["raw"], hashlib.sha256).hexdigest()
    assert hit["headers"]["X-BeamClaw-Signature"] == f"sha256={expected}"


def test_only_the_jobs_tenants_channels_are_accepted(api, make_tenant, settings):
    settings.BEAMCLAW_OUTBOUND = {"ALLOW_CIDRS": [f"{WEBHOOK_HOST}/32"]}
    other = make_tenant()
    theirs = channel_account_create(tenant=other.tenant, kind="webhook", name="theirs", agent=other.agent)
    for deliver, words in [
        ({"kind": "channel", "channel": theirs.pk, "to": "x"}, f"You have no channel {theirs.pk}"),
        ({"kind": "channel", "channel": "general", "to": "x"}, "'channel' must be the id"),
        ({"kind": "channel", "channel": theirs.pk}, f"You have no channel {theirs.pk}"),
    ]:
        response = api.post("/jobs/", json=job_body(deliver=deliver))
        assert response.status_code == 400 and words in response.json()["deliver"][0], response.text
    mine = channel_account_create(tenant=api.tenant.tenant, kind="webhook", name="mine", agent=api.tenant.agent)
    no_to = api.post("/jobs/", json=job_body(deliver={"kind": "channel", "channel": mine.pk}))
    assert no_to.status_code == 400 and "'to' must say where" in no_to.json()["deliver"][0]


def test_a_disabled_channel_fails_the_delivery_at_once(api, channel, callback_receiver):
    job = api.post("/jobs/", json=job_body(session_target="isolated", deliver={"kind": "channel", "channel": channel.pk, "to": "x"})).json()
    channel_account_update(account=channel, enabled=False)
    outcome = delivered(api.post(f"/jobs/{job['id']}/run/").json()["id"])
    assert (outcome.delivery_status, outcome.delivery_attempts) == ("failed", 1)
    assert "disabled" in outcome.delivery_error
    assert callback_receiver.hits == []
