"""GET /metrics on the real stack: what the web and the workers recorded, added up in the web's scrape
(multiprocess), the gauges read at scrape time, and who may scrape."""

import uuid

import httpx
from prometheus_client.parser import text_string_to_metric_families

from sessions.models import Run, ToolCall
from tests.conftest import openai_client, start_daphne, wait_until
from tools.models import Approval


def scrape(base_url: str, headers: dict | None = None) -> dict:
    """Every sample of a scrape, keyed by (sample name, frozenset of its labels)."""
    response = httpx.get(f"{base_url}/metrics", headers=headers or {}, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_a_chat_completion_counts_in_the_web_scrape(live, tenant):
    stream = openai_client(live, tenant).chat.completions.create(
        model="assistant", messages=[{"role": "user", "content": "[[deltas=4]] How many tokens is this?"}], stream=True
    )
    assert "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    run = Run.objects.get(tenant=tenant.tenant)
    assert run.status == Run.Status.SUCCEEDED and run.input_tokens > 0 and run.output_tokens > 0

    samples = scrape(live)
    slug = tenant.tenant.slug
    # Started in the web process (the request submits the run); finished, tokens and timings in the worker.
    assert value(samples, "beamclaw_runs_started_total", tenant=slug) == 1
    assert value(samples, "beamclaw_runs_finished_total", tenant=slug, status="succeeded") == 1
    assert value(samples, "beamclaw_runs_finished_total", tenant=slug, status="failed") == 0
    assert value(samples, "beamclaw_tokens_total", tenant=slug, type="input") == run.input_tokens
    assert value(samples, "beamclaw_tokens_total", tenant=slug, type="output") == run.output_tokens
    assert value(samples, "beamclaw_run_first_token_seconds_count", tenant=slug) == 1
    first_token = value(samples, "beamclaw_run_first_token_seconds_sum", tenant=slug)
    assert 0 < first_token <= (run.finished_at - run.started_at).total_seconds()
    assert value(samples, "beamclaw_run_step_seconds_count", tenant=slug) == 1
    assert value(samples, "beamclaw_run_step_seconds_bucket", tenant=slug, le="+Inf") == 1
    # Never a run or session id as a label.
    assert not any(str(run.pk) in str(labels) or str(run.session_id) in str(labels) for _, labels in samples)


def test_tool_calls_count_by_tool_and_status_with_made_up_names_folded(live, tenant, fake_requests):
    before = scrape(live)
    made_up = f"tool_{uuid.uuid4().hex[:8]}"
    openai_client(live, tenant).chat.completions.create(
        model="assistant",
        messages=[{"role": "user", "content": f"[[tool=sessions_list:{{}}]] [[tool={made_up}:{{}}]] list them"}],
    )
    calls = {call.name: call.status for call in ToolCall.objects.filter(run__tenant=tenant.tenant)}
    assert calls == {"sessions_list": ToolCall.Status.SUCCEEDED, made_up: ToolCall.Status.DENIED}

    after = scrape(live)

    def delta(tool, status):
        return (value(after, "beamclaw_tool_calls_total", tool=tool, status=status)
                - value(before, "beamclaw_tool_calls_total", tool=tool, status=status))

    assert delta("sessions_list", "succeeded") == 1
    assert delta("(other)", "denied") == 1
    assert not any(made_up in str(labels) for _, labels in after)


def test_pending_approvals_and_queue_depth_are_read_at_scrape_time(live, make_tenant):
    bundle = make_tenant(approval={"mode": "always", "allowlist": []})
    slug = bundle.tenant.slug
    samples = scrape(live)
    assert value(samples, "beamclaw_approvals_pending", tenant=slug) == 0
    assert ("beamclaw_queue_depth", frozenset({("queue", f"tenant.{slug}")})) in samples
    assert ("beamclaw_queue_depth", frozenset({("queue", "system")})) in samples

    # A private address: if the call ever ran, the address policy would refuse it before any connection.
    response = httpx.post(f"{live}/api/tools/invoke", headers=bundle.headers, timeout=30,
                          json={"agent": "assistant", "tool": "web_fetch", "input": {"url": "http://10.255.0.1/"}})
    assert response.status_code == 202, response.text
    assert value(scrape(live), "beamclaw_approvals_pending", tenant=slug) == 1

    approval = Approval.objects.get(tenant=bundle.tenant)
    assert httpx.post(f"{live}/api/approvals/{approval.pk}/deny/", headers=bundle.headers, json={}).status_code == 200
    samples = scrape(live)
    assert value(samples, "beamclaw_approvals_pending", tenant=slug) == 0


def test_queue_depth_counts_steps_waiting_for_a_worker(live, fleet, tenant):
    # The shared worker is stopped (fleet): the run's first step waits in the tenant's queue.
    session = httpx.post(f"{live}/api/sessions/", headers=tenant.headers, json={"agent": "assistant"}).json()
    response = httpx.post(f"{live}/api/sessions/{session['id']}/messages/", headers=tenant.headers, json={"content": "hi"})
    assert response.status_code == 202, response.text
    queue = f"tenant.{tenant.tenant.slug}"
    assert value(scrape(live), "beamclaw_queue_depth", queue=queue) == 1

    fleet(f"metrics-{uuid.uuid4().hex[:4]}")
    run_id = response.json()["run"]["id"]
    wait_until(lambda: Run.objects.get(pk=run_id).status == Run.Status.SUCCEEDED, timeout=30, message="the run to finish")
    assert value(scrape(live), "beamclaw_queue_depth", queue=queue) == 0


def test_the_metrics_token_is_required_when_set_and_loopback_only_otherwise(live, service_env, log_dir):
    forwarded = httpx.get(f"{live}/metrics", headers={"X-Forwarded-For": "203.0.113.7"})
    assert forwarded.status_code == 403
    assert "BEAMCLAW_METRICS_TOKEN" in forwarded.json()["detail"]

    token = uuid.uuid4().hex
    proc, url = start_daphne(f"daphne-metrics-{token[:6]}", {**service_env, "BEAMCLAW_METRICS_TOKEN": token}, log_dir)
    try:
        missing = httpx.get(f"{url}/metrics")
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"].startswith("Bearer")
        assert "needs the metrics token" in missing.json()["detail"]
        wrong = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {token}x"})
        assert wrong.status_code == 401
        assert "wrong" in wrong.json()["detail"]
        samples = scrape(url, headers={"Authorization": f"Bearer {token}"})
        assert any(name == "beamclaw_approvals_pending" for name, _ in samples)
    finally:
        proc.stop()
