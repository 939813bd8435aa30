"""A kill storm: 20 SIGKILLs of workers at random moments across a fleet of two, while runs stream, tools run,
an approval waits and cron jobs fire. Every run ends exactly once (one terminal event at most in its stream,
exactly one for a client); every transcript has each user message once and one reply per step; streaming
clients get each reply whole, once.

The workers run with the production timings: a dead worker's leases lapse in 30 s and its heartbeat in 15 s,
which is how long the work it held waits before a survivor takes it over.
"""

import json
import random
import shutil
import time

import httpx
import pytest

from cron.models import CronRun
from sessions import events
from sessions.models import Message, Run, ToolCall
from tests.conftest import sse_events, wait_until
from tests.faults.clients import StreamedReply
from tools.models import Approval

pytestmark = [
    pytest.mark.faults,
    pytest.mark.timeout(420),
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed (scripts/ensure_sandbox_tools.sh)"),
]

KILLS = 20


def _tool(name: str, tool_input: dict) -> str:
    return f"[[tool={name}:{json.dumps(tool_input)}]]"


def _send(api: httpx.Client, content: str) -> str:
    session_id = api.post("/sessions/", json={"agent": "assistant"}).json()["id"]
    response = api.post(f"/sessions/{session_id}/messages/", json={"content": content})
    assert response.status_code == 202, response.text
    return response.json()["run"]["id"]


def _ended_exactly_once(gateway: str, headers: dict, run: Run) -> list[str]:
    """What is wrong with a finished run's record, or with its ending as a client sees it, if anything."""
    problems = []
    published = [e.event for e in events.read_all(run.pk) if e.event in events.TERMINAL_EVENTS]
    if len(published) > 1:
        problems.append(f"terminal events published {published}")
    # A worker killed between the run's commit and its publish leaves the stream without a terminal event;
    # readers then rebuild it from Postgres (docs/run-engine.md, "The event stream"). A client replaying
    # the run's events must get exactly one, either way.
    with httpx.stream("GET", f"{gateway}/api/runs/{run.pk}/events/", headers=headers, timeout=60) as response:
        seen = [e["event"] for e in sse_events(response.iter_lines()) if e.get("event") in events.TERMINAL_EVENTS]
    if len(seen) != 1:
        problems.append(f"terminal events a client sees {seen}")
    messages = list(Message.objects.filter(run=run).values_list("role", "step"))
    users = [m for m in messages if m[0] == "user"]
    replies = [step for role, step in messages if role == "assistant"]
    if len(users) > 1:
        problems.append(f"{len(users)} copies of the user message")
    if len(replies) != len(set(replies)):
        problems.append(f"reply steps {replies}")
    return problems


def test_twenty_sigkills_across_two_workers(gateway, make_tenant, fleet, log_dir):
    spawn = fleet
    fleet = [spawn("storm-0"), spawn("storm-1")]
    tenant = make_tenant()
    guarded = make_tenant(approval={"mode": "always", "allowlist": []})
    api = httpx.Client(base_url=f"{gateway}/api", headers=tenant.headers, timeout=30)
    guarded_api = httpx.Client(base_url=f"{gateway}/api", headers=guarded.headers, timeout=30)
    job = api.post("/cron/jobs/", json={
        "name": "storm report", "agent": "assistant", "prompt": "cron during the storm [[deltas=10]] [[delay_ms=100]]",
        "session_target": "isolated", "enabled": False, "schedule": {"kind": "every", "every": "1h"},
    })
    assert job.status_code == 201, job.text

    replies = [
        StreamedReply(gateway, tenant.headers, f"storm stream {n} " + " ".join(f"w{i}" for i in range(12)), model="assistant")
        for n in range(6)
    ]
    tool_runs = [_send(api, f"tool run {n} " + _tool("exec", {"command": f"sleep 1; echo done-{n}"})) for n in range(3)]
    guarded_runs = [_send(guarded_api, f"guarded {n} " + _tool("exec", {"command": f"echo approved-{n}"})) for n in range(2)]
    cron_runs: list[str] = []
    for reply in replies[:3]:
        reply.start()

    rng = random.Random(20)
    for kill in range(KILLS):
        time.sleep(rng.uniform(0.1, 1.0))
        if kill == 2:
            cron_runs.append(api.post(f"/cron/jobs/{job.json()['id']}/run/").json()["id"])
        if kill == 5:
            for reply in replies[3:]:
                reply.start()
        if kill in (8, 14):
            pending = guarded_api.get("/approvals/", params={"status": "pending"}).json()["results"]
            for approval in pending[:1]:
                guarded_api.post(f"/approvals/{approval['id']}/approve/", json={})
        if kill == 11:
            cron_runs.append(api.post(f"/cron/jobs/{job.json()['id']}/run/").json()["id"])
        index = rng.randrange(len(fleet))
        fleet[index].kill()
        fleet[index] = spawn(f"storm-{kill + 2}")
    last_kill = time.monotonic()

    # Approvals still pending after the storm, or asked again by a step run again, are granted until the guarded
    # runs end: they must finish with their calls run, not denied by the approval timeout.
    def guarded_runs_ended() -> bool:
        for approval in guarded_api.get("/approvals/", params={"status": "pending"}).json()["results"]:
            guarded_api.post(f"/approvals/{approval['id']}/approve/", json={})
        return Run.objects.filter(pk__in=guarded_runs, status__in=Run.TERMINAL_STATUSES).count() == len(guarded_runs)

    wait_until(guarded_runs_ended, timeout=120, interval=0.5, message="the guarded runs to end, approved")

    run_ids = tool_runs + guarded_runs
    for reply in replies:
        reply.join()
        run_ids.append(reply.run_id)
    cron_run_ids = [
        wait_until(lambda: CronRun.objects.filter(pk=pk, status__in=CronRun.TERMINAL_STATUSES).first(), timeout=120,
                   message=f"cron run {pk} to finish").run_id
        for pk in cron_runs
    ]
    run_ids += [str(pk) for pk in cron_run_ids]
    runs = [
        wait_until(lambda: Run.objects.filter(pk=pk, status__in=Run.TERMINAL_STATUSES).first(), timeout=120,
                   message=f"run {pk} to end")
        for pk in run_ids
    ]
    settled_after = time.monotonic() - last_kill

    for reply in replies:
        assert reply.errors == [] and reply.done, reply.errors
        assert reply.text == f"Echo: {reply.prompt}", "each streamed reply whole and once"
    headers_of = {tenant.tenant.pk: tenant.headers, guarded.tenant.pk: guarded.headers}
    problems = {str(run.pk): p for run in runs if (p := _ended_exactly_once(gateway, headers_of[run.tenant_id], run))}
    assert problems == {}
    assert all(run.status == Run.Status.SUCCEEDED for run in runs), [(str(r.pk), r.status, r.error) for r in runs]
    assert set(Approval.objects.filter(tenant=guarded.tenant).values_list("status", flat=True)) == {"allowed"}
    # A call whose worker was killed while it ran is recorded as failed (it may have had effects); none is denied
    # or left open.
    calls = ToolCall.objects.filter(run_id__in=run_ids)
    assert set(calls.values_list("status", flat=True)) <= {"succeeded", "failed"}
    line = (f"kill storm ({KILLS} SIGKILLs): runs affected {len(runs)}, completed exactly once "
            f"{len(runs) - len(problems)}, all ended {settled_after:.1f}s after the last kill")
    print(f"\n[fault report] {line}")
    with open(log_dir / "fault-report.txt", "a") as report:
        report.write(line + "\n")
