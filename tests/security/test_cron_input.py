"""Cron input a red-team pass sent: schedules that overflowed the date arithmetic (500s), webhook URLs that
carried credentials shown back to every reader, and connection headers a tenant could set."""

import pytest

from cron.models import CronJob
from tests.cron.conftest import api  # noqa: F401 (fixture)

JOB = {"name": "probe", "agent": "assistant", "prompt": "hi"}


@pytest.mark.parametrize(
    "schedule, field, fragment",
    [
        ({"kind": "every", "every": 1e308}, "every", "between 1m and 3650d"),
        ({"kind": "every", "every": "99999999999w"}, "every", "between 1m and 3650d"),
        ({"kind": "every", "every": "PT99999999999999H"}, "every", "between 1m and 3650d"),
        ({"kind": "every", "every": "3651d"}, "every", "between 1m and 3650d"),
        ({"kind": "every", "every": "1s"}, "every", "between 1m and 3650d"),  # the tenant minimum
        ({"kind": "at", "at": "in 99999999999999h"}, "at", "at most 3650d"),
        ({"kind": "at", "at": "+99999999999w"}, "at", "at most 3650d"),
        ({"kind": "every", "every": "1h", "anchor": "9999-12-31T23:00:00-05:00"}, "anchor", "years 1-9999"),
    ],
)
def test_out_of_range_schedules_are_a_400_naming_the_field(api, schedule, field, fragment):
    response = api.post("/jobs/", json={**JOB, "schedule": schedule})
    assert response.status_code == 400, response.text
    assert fragment in response.json()["schedule"][field][0]
    assert not CronJob.objects.filter(tenant=api.tenant.tenant).exists()


def test_the_longest_allowed_interval_and_delay_are_accepted(api):
    every = api.post("/jobs/", json={**JOB, "name": "decade", "schedule": {"kind": "every", "every": "3650d"}})
    assert every.status_code == 201 and every.json()["schedule"]["every"] == "3650d"
    at = api.post("/jobs/", json={**JOB, "name": "later", "schedule": {"kind": "at", "at": "in 3650d"}})
    assert at.status_code == 201, at.text


def test_a_webhook_url_with_credentials_is_refused(api):
    response = api.post("/jobs/", json={**JOB, "schedule": "every 1h", "deliver": "https://user:pass@example.com/h"})
    assert response.status_code == 400
    message = response.json()["deliver"][0]
    assert "credentials" in message and "'secret'" in message and "header" in message
    assert "pass" not in message.replace("password", "")  # the refusal does not echo the credential
    assert not CronJob.objects.filter(tenant=api.tenant.tenant).exists()


@pytest.mark.parametrize(
    "header", ["Transfer-Encoding", "connection", "Keep-Alive", "TE", "Trailer", "Upgrade", "Proxy-Authorization",
               "Host", "Content-Length"],
)
def test_connection_and_framing_headers_are_refused(api, header):
    deliver = {"url": "https://example.com/h", "headers": {header: "x"}}
    response = api.post("/jobs/", json={**JOB, "schedule": "every 1h", "deliver": deliver})
    assert response.status_code == 400
    assert header in response.json()["deliver"][0] and "may not be set" in response.json()["deliver"][0]


def test_a_token_header_is_not_shown_back_and_survives_a_put_of_what_get_showed(api):
    deliver = {"url": "https://example.com/h", "headers": {"Authorization": "Bearer s3cret", "X-Team": "ops"},
               "secret": "k"}
    job = api.post("/jobs/", json={**JOB, "schedule": "every 1h", "deliver": deliver}).json()
    assert job["deliver"]["headers"] == {"Authorization": "********", "X-Team": "ops"}
    assert job["deliver"]["secret"] == "********"
    shown = api.get(f"/jobs/{job['id']}/").json()
    assert api.put(f"/jobs/{job['id']}/", json={**shown, "prompt": "changed"}).status_code == 200
    stored = CronJob.objects.get(pk=job["id"]).deliver
    assert stored["headers"]["Authorization"] == "Bearer s3cret" and stored["secret"] == "k"
