"""What happens to messages that arrive while a run is active, and the tenant limits."""

import threading
import time
import uuid

import httpx
import pytest
from django.db import transaction

from beamclaw_project.infra.redis import redis_client
from sessions import events
from sessions.models import AgentSession, Run
from sessions.runs import UNSTREAMED_PARAM, run_submit
from tenants.models import Agent, ApiKey, Tenant
from tests.conftest import wait_until

SLOW = "[[deltas=10]] [[delay_ms=100]]"


@pytest.fixture
def api(live, tenant):
    with httpx.Client(base_url=f"{live}/api", headers=tenant.headers, timeout=30) as client:
        yield client


def new_session(api, **fields) -> str:
    return api.post("/sessions/", json={"agent": "assistant", **fields}).json()["id"]


def send(api, session_id, content, mode=None) -> dict:
    body = {"content": content, **({"mode": mode} if mode else {})}
    response = api.post(f"/sessions/{session_id}/messages/", json=body)
    assert response.status_code == 202, response.text
    return response.json()["run"]


def wait_status(run_id, *statuses, timeout=30) -> Run:
    return wait_until(
        lambda: (run := Run.objects.get(pk=run_id)).status in statuses and run, timeout=timeout,
        message=f"run {run_id} to be {statuses}",
    )


def transcript(session_id) -> list[tuple[str, str]]:
    return [(m.role, m.text) for m in AgentSession.objects.get(pk=session_id).messages.order_by("seq")]


def test_followup_runs_each_message_in_turn(api):
    session_id = new_session(api)
    first = send(api, session_id, f"first {SLOW}")
    second = send(api, session_id, "second")
    assert second["status"] == "queued"
    wait_status(second["id"], "succeeded")
    assert [role for role, _ in transcript(session_id)] == ["user", "assistant", "user", "assistant"]
    assert Run.objects.get(pk=first["id"]).status == "succeeded"


def test_collect_batches_waiting_messages_into_one_run(api):
    session_id = new_session(api, queue_mode="collect")
    first = send(api, session_id, f"first {SLOW}")
    second = send(api, session_id, "second")
    third = send(api, session_id, "third")
    assert second["id"] == third["id"], "the third message joined the run already waiting"
    wait_status(second["id"], "succeeded")
    messages = list(AgentSession.objects.get(pk=session_id).messages.order_by("seq"))
    assert [m.role for m in messages] == ["user", "assistant", "user", "assistant"]
    assert [block["text"] for block in messages[2].content] == ["second", "third"]
    assert Run.objects.filter(session_id=session_id).count() == 2
    assert first["id"] != second["id"]


def test_a_message_collected_into_a_waiting_unstreamed_run_gets_its_deltas_as_they_come(api):
    """A run waiting in `collect` mode for a submitter that reads only its end (a plain chat completion: its
    deltas travel joined, sessions/runs/delta_window.py) is joined by a message whose sender follows the
    run as it streams: from then on the run streams as any other."""
    session_id = new_session(api, queue_mode="collect")
    send(api, session_id, f"first {SLOW}")
    session = AgentSession.objects.get(pk=session_id)
    waiting = run_submit(session=session, content=[{"type": "text", "text": "plain"}], trigger=Run.Trigger.OPENAI,
                         params={UNSTREAMED_PARAM: True})
    assert waiting.status == "queued" and waiting.params[UNSTREAMED_PARAM] is True
    joined = send(api, session_id, "streamed")
    assert joined["id"] == str(waiting.pk)
    assert UNSTREAMED_PARAM not in Run.objects.get(pk=waiting.pk).params
    wait_status(waiting.pk, "succeeded")


def test_interrupt_aborts_the_active_run_and_answers_the_new_message(api):
    session_id = new_session(api)
    first = send(api, session_id, f"long answer {SLOW}")
    wait_until(
        lambda: any(e.event == events.TEXT_DELTA for e in events.read_all(first["id"])), timeout=10,
        message="the first run to stream",
    )
    waiting = send(api, session_id, "waiting")
    urgent = send(api, session_id, "urgent", mode="interrupt")
    assert wait_status(first["id"], "aborted").error == "interrupted by a newer message"
    assert wait_status(waiting["id"], "aborted").error == "superseded by a newer message"
    wait_status(urgent["id"], "succeeded")
    turns = transcript(session_id)
    assert turns[-2:] == [("user", "urgent"), ("assistant", "Echo: urgent")]
    assert turns[1][0] == "assistant" and "Echo: long answer".startswith(turns[1][1]), "the interrupted reply is kept"


def test_steer_without_a_step_boundary_falls_back_to_followup(api):
    session_id = new_session(api, queue_mode="steer")
    send(api, session_id, f"first {SLOW}")
    steer = send(api, session_id, "also consider this")
    wait_status(steer["id"], "succeeded")
    assert transcript(session_id)[-1] == ("assistant", "Echo: also consider this")


def test_openai_endpoint_honours_the_queue_mode_header(live, tenant):
    session_key = "agent:assistant:oa-modes"
    headers = {**tenant.headers, "X-Session-Key": session_key}
    body = {"model": "assistant", "messages": [{"role": "user", "content": "x"}]}
    bad = httpx.post(f"{live}/v1/chat/completions", headers={**headers, "X-Queue-Mode": "loud"}, json=body, timeout=30)
    assert bad.status_code == 400 and "X-Queue-Mode" in bad.json()["error"]["message"]
    ok = httpx.post(f"{live}/v1/chat/completions", headers={**headers, "X-Queue-Mode": "interrupt"}, json=body, timeout=30)
    assert ok.status_code == 200
    assert Run.objects.get(pk=ok.headers["x-run-id"]).params["queue_mode"] == "interrupt"


def test_max_concurrent_runs_queues_extra_runs_instead_of_rejecting(api, tenant):
    Tenant.objects.filter(pk=tenant.tenant.pk).update(max_concurrent_runs=2)
    runs = [send(api, new_session(api), f"run {i} {SLOW}") for i in range(5)]
    assert [r["status"] for r in runs].count("running") == 2
    assert [r["status"] for r in runs].count("queued") == 3

    peak = 0
    def all_done():
        nonlocal peak
        statuses = list(Run.objects.filter(pk__in=[r["id"] for r in runs]).values_list("status", flat=True))
        peak = max(peak, statuses.count("running"))
        return statuses.count("succeeded") == 5

    wait_until(all_done, timeout=60, interval=0.02, message="all five runs")
    assert peak <= 2, "never more than the tenant's limit at once"


def test_openai_requests_over_the_cap_wait_their_turn_and_answer(api, live, tenant):
    # An OpenAI request's session is made with its run. Over the tenant's cap the run waits queued, so its
    # session must be written with it, and the run started once a slot frees, with or without history.
    Tenant.objects.filter(pk=tenant.tenant.pk).update(max_concurrent_runs=1)
    busy = send(api, new_session(api), f"holding the slot {SLOW}")
    conversations = {
        "single": [{"role": "user", "content": "over the cap"}],
        "history": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                    {"role": "user", "content": "over the cap again"}],
    }
    answers = {}

    def ask(name):
        answers[name] = httpx.post(f"{live}/v1/chat/completions", headers=tenant.headers, timeout=60,
                                   json={"model": "assistant", "messages": conversations[name]})

    threads = [threading.Thread(target=ask, args=(name,)) for name in conversations]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    busy_ended = Run.objects.get(pk=busy["id"]).finished_at
    for name, messages in conversations.items():
        response = answers[name]
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["message"]["content"] == f"Echo: {messages[-1]['content']}"
        run = Run.objects.get(pk=response.headers["x-run-id"])
        assert run.started_at >= busy_ended, "it waited for the slot"
        expected = [(m["role"], m["content"]) for m in messages] + [("assistant", f"Echo: {messages[-1]['content']}")]
        assert transcript(run.session_id) == expected


def test_a_run_waiting_for_room_is_not_overtaken_by_a_newer_request(api, live, tenant):
    # While runs wait for room, room that appears is theirs, oldest first. Here the cap is raised while one
    # waits (no run's end comes to start it): a request arriving then queues behind it, the waiting run
    # starts at once, and the newer one when a slot frees again. (The newer request once started at once
    # and the waiting run kept waiting.)
    Tenant.objects.filter(pk=tenant.tenant.pk).update(max_concurrent_runs=1)
    # (Aborted at the end: it only has to outlast the rest.)
    busy = send(api, new_session(api), "holding the slot [[deltas=3000]] [[delay_ms=100]]")
    answers = {}

    def ask(name):
        answers[name] = httpx.post(f"{live}/v1/chat/completions", headers=tenant.headers, timeout=60,
                                   json={"model": "assistant", "messages": [{"role": "user", "content": name}]})

    threads = [threading.Thread(target=ask, args=(name,)) for name in ("waiting", "newer")]
    try:
        wait_status(busy["id"], "running")
        threads[0].start()
        wait_until(lambda: Run.objects.filter(tenant=tenant.tenant, status=Run.Status.QUEUED).exists(), timeout=30,
                   message="the request over the cap to wait queued")
        Tenant.objects.filter(pk=tenant.tenant.pk).update(max_concurrent_runs=2)
        threads[1].start()
        for thread in threads:
            thread.join()
        assert Run.objects.get(pk=busy["id"]).status == Run.Status.RUNNING, "all this while the slot stayed busy"
    finally:
        assert api.post(f"/runs/{busy['id']}/abort/").status_code == 200
        for thread in threads:
            if thread.is_alive():
                thread.join()
    assert [answers[name].status_code for name in ("waiting", "newer")] == [200, 200]
    first, second = (Run.objects.get(pk=answers[name].headers["x-run-id"]) for name in ("waiting", "newer"))
    assert first.created_at < second.created_at
    assert first.started_at < second.started_at, "the run that waited started first"
    assert second.started_at >= first.finished_at, "the newer one waited for the slot the first one freed"
    wait_status(busy["id"], "aborted")


def test_a_run_queued_as_the_last_running_run_ends_starts_at_its_commit(api, tenant):
    # A run counted under the tenant's lock finds no room and is written queued; before its transaction
    # commits, the one running run ends. That end looked for waiting runs before this one could be seen, and
    # no other run's end comes: the run's own commit must start it. (It waited for the reaper, ~30 s, which
    # stalled 32 clients against the demo tenant's cap of 10 after a few hundred requests.)
    Tenant.objects.filter(pk=tenant.tenant.pk).update(max_concurrent_runs=1)
    busy = send(api, new_session(api), "holding the slot [[deltas=5]] [[delay_ms=100]]")
    wait_status(busy["id"], "running")
    agent = Agent.objects.get(tenant=tenant.tenant, slug="assistant")
    with transaction.atomic():
        session = AgentSession(tenant=tenant.tenant, agent=agent, key=f"queued-{uuid.uuid4().hex}", ephemeral=True)
        run = run_submit(session=session, content=[{"type": "text", "text": "over the cap"}],
                         trigger=Run.Trigger.API, session_is_new=True, room_counted_first=True)
        assert run.status == Run.Status.QUEUED, "the slot is taken: the run waits"
        wait_status(busy["id"], "succeeded")  # (read in this transaction: each statement sees what committed)
    assert Run.objects.get(pk=run.pk).status != Run.Status.QUEUED, "its commit found the freed slot and started it"
    assert wait_status(run.pk, "succeeded").status == Run.Status.SUCCEEDED
    assert transcript(session.pk) == [("user", "over the cap"), ("assistant", "Echo: over the cap")]


def test_max_concurrent_runs_holds_when_many_start_at_the_same_moment(api, tenant):
    # A hostile client sending many requests at once must not get past the cap: each start counts the
    # runs of the starts that held the tenant's row before it (the count once read a snapshot taken before
    # waiting for that row, so every waiter counted the runs from before the burst).
    Tenant.objects.filter(pk=tenant.tenant.pk).update(max_concurrent_runs=2)
    sessions = [new_session(api) for _ in range(8)]
    barrier = threading.Barrier(len(sessions))
    runs = []

    def start(session_id):
        with httpx.Client(base_url=api.base_url, headers=api.headers, timeout=30) as client:
            barrier.wait()
            runs.append(send(client, session_id, f"at once {SLOW}"))

    threads = [threading.Thread(target=start, args=(session_id,)) for session_id in sessions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [r["status"] for r in runs].count("running") <= 2, [r["status"] for r in runs]
    ended = wait_until(
        lambda: len(done := list(Run.objects.filter(pk__in=[r["id"] for r in runs], status="succeeded"))) == 8 and done,
        timeout=90, message="all eight runs",
    )
    # From the runs' own records, not from sampling: at each start, at most one other run was active.
    for run in ended:
        overlapping = [o for o in ended if o.pk != run.pk and o.started_at <= run.started_at < o.finished_at]
        assert len(overlapping) <= 1, (run.started_at, [(o.started_at, o.finished_at) for o in overlapping])


def test_openai_requests_sent_at_once_count_each_other_against_the_cap(api, live, tenant):
    # A request without a session counts its tenant's room in the round trip of its run's writes, after
    # them: a burst of such requests must still never run more than the cap at once, and the ones over it
    # must wait queued and then answer, not fail.
    Tenant.objects.filter(pk=tenant.tenant.pk).update(max_concurrent_runs=2)
    barrier = threading.Barrier(8)
    answers = []

    def ask(i):
        with httpx.Client(headers=tenant.headers, timeout=90) as client:
            barrier.wait()
            answers.append(client.post(f"{live}/v1/chat/completions",
                                       json={"model": "assistant", "messages": [{"role": "user", "content": f"burst {i} {SLOW}"}]}))

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(a.status_code for a in answers) == [200] * 8, [a.text for a in answers if a.status_code != 200]
    runs = list(Run.objects.filter(pk__in=[a.headers["x-run-id"] for a in answers]))
    assert len(runs) == 8 and {run.status for run in runs} == {"succeeded"}
    overlaps = []
    for run in runs:
        overlapping = [o for o in runs if o.pk != run.pk and o.started_at <= run.started_at < o.finished_at]
        assert len(overlapping) <= 1, (run.started_at, [(o.started_at, o.finished_at) for o in overlapping])
        overlaps.append(len(overlapping))
    assert 1 in overlaps, "two ran at once: the cap is two, not one"


def test_daily_token_budget_answers_429_saying_when_it_resets(api, live, tenant):
    session_id = new_session(api)
    run = send(api, session_id, "spend some tokens")
    wait_status(run["id"], "succeeded")
    Tenant.objects.filter(pk=tenant.tenant.pk).update(daily_token_budget=1)

    refused = api.post(f"/sessions/{session_id}/messages/", json={"content": "more"})
    assert refused.status_code == 429
    assert "resets at" in refused.json()["detail"] and "UTC" in refused.json()["detail"]
    assert int(refused.headers["Retry-After"]) > 0
    openai_refused = httpx.post(
        f"{live}/v1/chat/completions", headers=tenant.headers, timeout=30,
        json={"model": "assistant", "messages": [{"role": "user", "content": "more"}]},
    )
    assert openai_refused.status_code == 429 and openai_refused.json()["error"]["code"] == "token_budget_exceeded"


def test_the_daily_token_budget_counts_every_run_s_tokens(api, tenant):
    from beamclaw_project.infra.redis import redis_client

    session_id = new_session(api)
    for text in ("spend some tokens", "and some more"):
        run = send(api, session_id, text)
        # The count goes out with the run's announcement, ahead of its run.completed event.
        wait_until(lambda: events.RUN_COMPLETED in [e.event for e in events.read_all(run["id"])], timeout=30,
                   message="the run's end announced")
    spent = sum(r.input_tokens + r.output_tokens for r in Run.objects.filter(tenant=tenant.tenant))
    assert spent > 0 and Run.objects.filter(tenant=tenant.tenant).count() == 2
    # The first run's end started the day's counter (sessions/runs/budget.py) from Postgres; the second's
    # added to it.
    [counter] = redis_client().keys(f"bc:tokens:{tenant.tenant.pk}:*")
    assert int(redis_client().get(counter)) == spent


def test_per_key_rate_limit_answers_429_with_retry_after(live, tenant):
    ApiKey.objects.filter(tenant=tenant.tenant).update(rate_limit_per_minute=3)
    # The limit counts in fixed windows of a clock minute (tenants/limits.py): requests that straddled one
    # would be counted in two. Five requests take well under the 5 s this leaves them.
    if (left := 60 - time.time() % 60) < 5:
        time.sleep(left)
    statuses = [httpx.get(f"{live}/api/agents/", headers=tenant.headers, timeout=10) for _ in range(4)]
    assert [r.status_code for r in statuses[:3]] == [200, 200, 200]
    assert statuses[3].status_code == 429
    assert 1 <= int(statuses[3].headers["Retry-After"]) <= 60
    openai = httpx.get(f"{live}/v1/models", headers=tenant.headers, timeout=10)
    assert openai.status_code == 429 and openai.headers["Retry-After"]


def test_a_key_nobody_has_is_refused_and_leaves_no_rate_counter_behind(live, tenant):
    # A request is counted against its key's rate while the key is looked up (tenants/limits.py), by the
    # key's hash: a made-up key must not leave a counter in Redis for every key a client tries.
    made_up = f"bc_{uuid.uuid4().hex}"
    refused = httpx.get(f"{live}/v1/models", headers={"Authorization": f"Bearer {made_up}"}, timeout=10)
    assert refused.status_code == 401 and "Invalid API key" in refused.text
    assert not list(redis_client().scan_iter(f"bc:rate:{ApiKey.hash_key(made_up)}:*"))
    assert httpx.get(f"{live}/v1/models", headers=tenant.headers, timeout=10).status_code == 200
    assert list(redis_client().scan_iter(f"bc:rate:{ApiKey.hash_key(tenant.api_key)}:*"))


def test_suspended_tenant_is_403_everywhere(live, tenant):
    Tenant.objects.filter(pk=tenant.tenant.pk).update(status=Tenant.Status.SUSPENDED)
    assert httpx.get(f"{live}/api/sessions/", headers=tenant.headers, timeout=10).status_code == 403
    assert httpx.get(f"{live}/v1/models", headers=tenant.headers, timeout=10).status_code == 403


def test_steer_joins_the_active_run_at_its_next_step_boundary(api, fake_requests):
    session_id = new_session(api, queue_mode="steer")
    first = send(api, session_id, '[[tool=exec:{"command": "sleep 1; echo done"}]]')
    wait_until(lambda: Run.objects.get(pk=first["id"]).tool_calls.exists(), timeout=20, message="the tool call")
    steer = send(api, session_id, "also mention the weather")
    assert wait_status(steer["id"], "succeeded").params["merged_into"] == first["id"]
    wait_status(first["id"], "succeeded")
    boundary = AgentSession.objects.get(pk=session_id).messages.order_by("seq")[2]
    assert [block["type"] for block in boundary.content] == ["tool_result", "text"]
    assert boundary.content[1]["text"] == "also mention the weather"
    assert "also mention the weather" in str(fake_requests(1)[0]["body"]["messages"][-1])
    assert Run.objects.filter(session_id=session_id).count() == 2, "no separate run answered the steering"
