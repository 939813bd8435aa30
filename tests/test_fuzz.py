"""Fuzzing: the OpenAPI schema with schemathesis, and WebSocket frames with hypothesis.

Pass criteria: zero 5xx from any generated request; after any malformed frame the socket still answers a
well-formed request.
"""

import json
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tenants.models import ApiKey
from tests.conftest import ROOT
from tests.sessions.test_websocket import WS


@pytest.mark.timeout(300)
def test_openapi_fuzz_finds_no_server_errors(live, tenant, tmp_path):
    ApiKey.objects.filter(tenant=tenant.tenant).update(rate_limit_per_minute=0)
    result = subprocess.run(
        [
            sys.executable, "-m", "schemathesis.cli", "run", f"{live}/api/schema/?format=json",
            "--url", live,
            "--checks", "not_a_server_error",
            "--header", f"Authorization: Bearer {tenant.api_key}",
            "--phases", "examples,coverage,fuzzing",
            "--max-examples", "12",
            "--max-time", "60",
            "--seed", "20261124",
            "--request-timeout", "20",
            # One worker: hypothesis' lambda introspection is not thread-safe on Python 3.11 (a tool crash,
            # not a finding). Revoking keys is left out: the fuzzer would revoke its own key and go blind.
            "--workers", "1",
            "--exclude-path-regex", "/revoke/$",
            "--continue-on-failure",
            "--report-dir", str(tmp_path),
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    summary = result.stdout[-6000:]
    (tmp_path / "schemathesis.out").write_text(result.stdout)
    print(result.stdout)
    assert result.returncode == 0, summary
    assert "Server error" not in summary


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
frame_like = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["req", "res", "event"]) | st.text(max_size=5),
        "id": json_values,
        "method": st.sampled_from(
            ["health", "agents.list", "sessions.list", "sessions.create", "sessions.history", "sessions.reset",
             "sessions.subscribe", "chat.send", "chat.abort", "connect", "nope"]
        ) | json_values,
        "params": json_values,
    },
)
frames = st.one_of(
    st.text(max_size=50),
    json_values.map(json.dumps),
    frame_like.map(json.dumps),
)


def test_websocket_frame_fuzz_keeps_the_connection_usable(live, tenant):
    ApiKey.objects.filter(tenant=tenant.tenant).update(rate_limit_per_minute=0)
    client = WS(live, tenant.api_key)

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
    @given(frame=frames)
    def check(frame):
        client.send(frame)
        reply = client.call("health")
        assert reply["ok"], (frame, reply)

    try:
        check()
    finally:
        client.close()
