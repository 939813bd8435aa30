"""The durable run engine: ordering, the event stream, abort, per-tenant queues, crash recovery."""

import json
import os
import signal
import threading
import uuid

import httpx
import pytest

from beamclaw_project.celery import app
from beamclaw_project.infra.queues import WORK_PRIORITY, queue_depths
from beamclaw_project.infra.redis import redis_client
from sessions import events
from sessions.models import AgentSession, Message, Run
from sessions.runs import run_abort, run_submit
from tests.conftest import wait_until


class StreamReader(threading.Thread):
    """Reads one streaming chat completion in the background, keeping every SSE payload."""

    def __init__(self, live, bundle, text, user=None):
        super().__init__(daemon=True)
        self.request = {
            "url": f"{live}/v1/chat/completions",
            "headers": bundle.headers,
            "json": {"model": "assistant", "stream": True, "messages": [{"role": "user", "content": text}],
                     **({"user": user} if user else {})},
        }
        self.payloads: list = []
        self.run_id = None
        self.done = False

    def run(self):
        with httpx.stream("POST", timeout=60, **self.request) as response:
            self.run_id = response.headers.get("x-run-id")
            for line in response.iter_lines():
                if line == "data: [DONE]":
                    self.done = True
                elif line.startswith("data: "):
                    self.payloads.append(json.loads(line[6:]))

    @property
    def text(self) -> str:
        return "".join(p["choices"][0]["delta"].get("content", "") for p in self.payloads if p.get("choices"))

    @property
    def content_chunks(self) -> int:
        return sum(1 for p in self.payloads if p.get("choices") and p["choices"][0]["delta"].get("content"))


def test_event_stream_is_ordered_and_replayable(live, tenant):
    response = httpx.post(
        f"{live}/v1/chat/completions", headers=tenant.headers, timeout=30,
        json={"model": "assistant", "messages": [{"role": "user", "content": "alpha beta gamma"}]},
    )
    run_id = response.headers["x-run-id"]
    stream = events.read_all(run_id)
    assert [e.seq for e in stream] == list(range(1, len(stream) + 1))
    assert stream[0].event == events.RUN_STARTED and stream[-1].event == events.RUN_COMPLETED
    assert "".join(e.payload["text"] for e in stream if e.event == events.TEXT_DELTA) == "Echo: alpha beta gamma"
    assert stream[-1].payload["message"]["content"] == [{"type": "text", "text": "Echo: alpha beta gamma"}]
    assert events.read_all(run_id, after_seq=2) == stream[2:], "a client can resume after any seq"
    assert 0 < redis_client().ttl(events.stream_key(run_id)) <= 3600


def test_one_run_at_a_time_per_session(live, tenant):
    first = StreamReader(live, tenant, "first [[deltas=8]] [[delay_ms=60]]", user="bob")
    first.start()
    wait_until(lambda: first.content_chunks >= 1, timeout=20, message="the first run to stream")
    second = StreamReader(live, tenant, "second", user="bob")
    second.start()
    first.join(30)
    second.join(30)
    assert first.text == "Echo: first" and second.text == "Echo: second"

    session = AgentSession.objects.get(tenant=tenant.tenant, key="agent:assistant:bob")
    runs = list(session.runs.order_by("created_at"))
    assert runs[1].started_at >= runs[0].finished_at, "the second run waited for the first"
    transcript = [(m.role, m.text) for m in session.messages.order_by("seq")]
    assert transcript == [
        ("user", "first [[deltas=8]] [[delay_ms=60]]"), ("assistant", "Echo: first"), ("user", "second"), ("assistant", "Echo: second"),
    ]


def test_abort_stops_a_streaming_run_and_keeps_what_was_said(live, tenant):
    reader = StreamReader(live, tenant, "a b c d e f g h i j k l [[delay_ms=150]]", user="carol")
    reader.start()
    wait_until(lambda: reader.content_chunks >= 2, timeout=20, message="some streamed text")
    run_abort(run=Run.objects.get(pk=reader.run_id), reason="user pressed stop")
    reader.join(30)
    assert reader.done
    assert reader.payloads[-1]["error"]["code"] == "aborted"
    run = Run.objects.get(pk=reader.run_id)
    assert run.status == Run.Status.ABORTED and run.error == "user pressed stop"
    reply = run.messages.get(role="assistant")
    assert reply.text and "Echo: a b c d e f g h i j k l".startswith(reply.text)
    assert len(reply.text) < len("Echo: a b c d e f g h i j k l")


def test_work_goes_to_the_tenants_own_queue(live, tenant, worker, workers):
    worker["proc"].stop()
    try:
        session = AgentSession.objects.create(tenant=tenant.tenant, agent=tenant.agent, key="agent:assistant:q")
        run = run_submit(session=session, content=[{"type": "text", "text": "queued"}], trigger=Run.Trigger.API)
        queue = f"tenant.{tenant.tenant.slug}"
        wait_until(lambda: queue_depths(tenant_slugs=[tenant.tenant.slug])[queue] == 1, timeout=5,
                   message=f"the step in {queue}")
        assert queue_depths(tenant_slugs=[])["system"] == 0
    finally:
        worker["proc"] = workers.spawn("shared-after-queue-test")
    wait_until(lambda: Run.objects.get(pk=run.pk).status == Run.Status.SUCCEEDED, timeout=20, message="the run")


def test_worker_consumes_queues_of_tenants_created_after_it_started(live, make_tenant, worker):
    bundle = make_tenant()
    queue = f"tenant.{bundle.tenant.slug}"

    def consuming():
        replies = app.control.inspect(timeout=1).active_queues() or {}
        return any(queue in {q["name"] for q in queues} for queues in replies.values())

    wait_until(consuming, timeout=15, interval=0.2, message=f"a worker consuming {queue}")
    response = httpx.post(
        f"{live}/v1/chat/completions", headers=bundle.headers, timeout=30,
        json={"model": "assistant", "messages": [{"role": "user", "content": "new tenant"}]},
    )
    assert response.json()["choices"][0]["message"]["content"] == "Echo: new tenant"


def test_sigkilled_worker_mid_stream_completes_exactly_once(gateway, tenant, crash_recovery):
    live = gateway
    victim = crash_recovery("victim")
    expected = "Echo: " + " ".join(f"w{i}" for i in range(30))
    reader = StreamReader(live, tenant, " ".join(f"w{i}" for i in range(30)) + " [[delay_ms=80]]", user="dave")
    reader.start()
    try:
        wait_until(lambda: reader.content_chunks >= 5, timeout=20, message="the run to be mid-stream")
        victim.kill()
        assert Run.objects.get(pk=reader.run_id).status == Run.Status.RUNNING
    finally:
        crash_recovery("rescuer")
    reader.join(60)

    assert reader.done
    assert reader.text == expected, "the client saw every word once: no loss, no repeat"
    run = Run.objects.get(pk=reader.run_id)
    assert run.status == Run.Status.SUCCEEDED
    transcript = [(m.role, m.text) for m in Message.objects.filter(session=run.session).order_by("seq")]
    assert transcript == [("user", expected[len("Echo: "):] + " [[delay_ms=80]]"), ("assistant", expected)]


def _submit(tenant, key: str, text: str) -> Run:
    session = AgentSession.objects.create(tenant=tenant.tenant, agent=tenant.agent, key=key)
    return run_submit(session=session, content=[{"type": "text", "text": text}], trigger=Run.Trigger.API)


def _succeeded(run: Run) -> bool:
    return Run.objects.get(pk=run.pk).status == Run.Status.SUCCEEDED


def test_a_step_fetched_by_a_worker_sigkilled_before_it_started_runs_elsewhere(tenant, crash_recovery):
    # The victim takes two steps from the queue and runs one at a time: the second waits, fetched and unstarted.
    victim = crash_recovery("victim", concurrency=1, env={"CELERY_WORKER_PREFETCH_MULTIPLIER": "2"})
    slow = _submit(tenant, "agent:assistant:slow", "slow " + " ".join(f"w{i}" for i in range(20)) + " [[delay_ms=200]]")
    waiting = _submit(tenant, "agent:assistant:waiting", "waiting behind the slow one")
    wait_until(lambda: redis_client().hlen("unacked") == 2, timeout=20, message="the victim holding both steps")
    assert Run.objects.get(pk=waiting.pk).status == Run.Status.RUNNING and not Message.objects.filter(run=waiting, role="assistant")
    victim.kill()

    crash_recovery("rescuer")
    wait_until(lambda: _succeeded(slow) and _succeeded(waiting), timeout=60, message="both runs to finish")
    # Not waiting out the broker's visibility timeout: the dead worker's messages went back to their queue
    # (and were taken and acknowledged there), none is left to be handed out again in an hour.
    wait_until(lambda: redis_client().hlen("unacked") == 0, timeout=30, message="no message left with the dead worker")
    for run in (slow, waiting):
        assert list(Message.objects.filter(run=run).values_list("role", flat=True)) == ["user", "assistant"]


def test_a_step_lost_between_the_broker_and_a_dying_worker_is_sent_again(tenant, crash_recovery):
    """Redis takes a message off its queue as it hands it to a worker (BRPOP), before the worker records it
    as unacknowledged; a worker killed in between loses it. Here the message is taken as that fetch would.
    A crash-recovery test: the loss shows after a lease period, 2 s here (CRASH_RECOVERY_TIMINGS)."""
    run = _submit(tenant, "agent:assistant:lost", "lost on the way")
    queue = f"tenant.{tenant.tenant.slug}"
    with app.connection_for_read() as connection:
        steps_list = connection.default_channel._q_for_pri(queue, WORK_PRIORITY)  # (steps wait at that priority)
    wait_until(lambda: redis_client().llen(steps_list) == 1, timeout=10, message=f"the step in {queue}")
    assert redis_client().rpop(steps_list) is not None

    crash_recovery("rescuer")
    wait_until(lambda: _succeeded(run), timeout=60, message="the run to finish")
    assert [m.text for m in Message.objects.filter(run=run).order_by("seq")] == ["lost on the way", "Echo: lost on the way"]


def test_a_worker_frozen_past_its_lease_adds_nothing_when_it_wakes(gateway, tenant, crash_recovery):
    """SIGSTOP (a paused container, a stalled VM) for longer than the lease: another worker takes the step
    over; the frozen one, woken with the rest of the model's stream in its socket, must not publish it.
    A lease-expiry test: the lease is 2 s here (CRASH_RECOVERY_TIMINGS)."""
    victim = crash_recovery("frozen")
    words = " ".join(f"w{i}" for i in range(30))
    reader = StreamReader(gateway, tenant, f"{words} [[delay_ms=100]]", user="frozen")
    reader.start()
    wait_until(lambda: reader.content_chunks >= 5, timeout=20, message="the run to be mid-stream")
    os.killpg(victim.proc.pid, signal.SIGSTOP)
    try:
        frozen_at = reader.content_chunks
        crash_recovery("rescuer")
        wait_until(lambda: reader.content_chunks > frozen_at + 3, timeout=30, message="the rescuer to stream the rest")
    finally:
        os.killpg(victim.proc.pid, signal.SIGCONT)
    reader.join(60)

    assert reader.done
    assert reader.text == f"Echo: {words}", "every word once: the woken worker published nothing"
    assert victim.alive
    run = Run.objects.get(pk=reader.run_id)
    assert run.status == Run.Status.SUCCEEDED
    assert list(Message.objects.filter(run=run).values_list("role", flat=True)) == ["user", "assistant"]


def _chat_request(text: str, *, stream: bool = False):
    from sessions.chat import parse_chat_request

    body = {"model": "assistant", "messages": [{"role": "user", "content": text}], "stream": stream}
    return parse_chat_request(body, session_header=None, queue_mode_header=None, session_mode_header=None)


def _asked_model(fake_requests, marker: str) -> bool:
    return any(marker in json.dumps(request) for request in fake_requests(200))


def _worker_holds(run_id) -> bool:
    from sessions.runs.kernel import run_lease_key

    return redis_client().get(run_lease_key(run_id)) not in (None, b"queued")


def _event_kinds(run_id) -> list[str]:
    return [event.event for event in events.read_all(run_id)]


def _assistant(tenant, *, own_key: bool):
    from tenants.selectors import agent_by_slug

    agent = agent_by_slug(tenant=tenant.tenant, slug="assistant")
    if own_key:
        agent.api_key = "sk-the-agents-own-key"
        agent.save(update_fields=["api_key"])
    return agent


# A chat completion without a session sends step 0 before its transaction commits (sessions/runs/kernel.py,
# run_start_lock_statement), with what the step would read (first_step_reads), unless its agent has a key of its
# own (kept out of the broker's messages): then the step reads its run, which waits for the commit. In these
# tests the transaction stays open until a worker holds the step.
@pytest.mark.parametrize("own_key", [False, True], ids=["reads-sent-with-the-step", "agent-with-its-own-key"])
def test_a_chat_run_s_step_sent_before_its_commit_ends_the_run_only_after_it(worker, tenant, fake_requests, own_key):
    from django.db import transaction

    from sessions.chat import chat_start

    agent = _assistant(tenant, own_key=own_key)
    marker = f"early-step-{uuid.uuid4().hex[:8]}"
    with transaction.atomic():
        run = chat_start(tenant=tenant.tenant, agent=agent, request=_chat_request(marker, stream=True)).run
        wait_until(lambda: _worker_holds(run.pk), timeout=30, message="a worker holding step 0")
        if own_key:
            assert not _asked_model(fake_requests, marker)  # it waits to read the run
        else:
            # The model is asked at once, and its text streams; the run's end waits for the commit.
            wait_until(lambda: events.TEXT_DELTA in _event_kinds(run.pk), timeout=30, message="the reply streaming")
            assert _asked_model(fake_requests, marker)
        assert events.RUN_COMPLETED not in _event_kinds(run.pk)
    wait_until(lambda: Run.objects.get(pk=run.pk).status == Run.Status.SUCCEEDED, timeout=30, message="the run done")
    assert _asked_model(fake_requests, marker)
    assert [m.content[0]["text"] for m in Message.objects.filter(run_id=run.pk, role="assistant")] == [f"Echo: {marker}"]
    # The step that waited finished the run: no second delivery (the reaper re-sends a step let go too soon).
    assert redis_client().get(f"bc:run:{run.pk}:step:0:attempts") == b"1"
    kinds = _event_kinds(run.pk)
    assert [kinds[0], kinds[-1]] == [events.RUN_STARTED, events.RUN_COMPLETED]


@pytest.mark.parametrize("own_key", [False, True], ids=["reads-sent-with-the-step", "agent-with-its-own-key"])
def test_a_chat_run_rolled_back_after_its_step_was_sent_leaves_no_trace(worker, tenant, fake_requests, own_key):
    from sessions.chat import chat_start

    agent = _assistant(tenant, own_key=own_key)
    marker = f"rolled-back-{uuid.uuid4().hex[:8]}"
    run = _rolled_back_once_a_worker_holds_its_step(
        lambda: chat_start(tenant=tenant.tenant, agent=agent, request=_chat_request(marker, stream=True)).run,
        meanwhile=None if own_key else lambda run: events.TEXT_DELTA in _event_kinds(run.pk),
    )
    # (With the run read, the step did not even ask the model.)
    assert not {events.RUN_COMPLETED, events.RUN_FAILED} & set(_event_kinds(run.pk))
    assert _asked_model(fake_requests, marker) is not own_key


def _rolled_back_once_a_worker_holds_its_step(start, *, meanwhile=None) -> Run:
    """The run `start()` submits in a transaction that rolls back once a worker holds its step 0 (and
    `meanwhile(run)` is true, if given), returned once the worker let go of the step: it wrote nothing."""
    from django.db import transaction

    from sessions.runs.kernel import run_lease_key

    try:
        with transaction.atomic():
            run = start()
            wait_until(lambda: _worker_holds(run.pk), timeout=30, message="a worker holding step 0")
            if meanwhile is not None:
                wait_until(lambda: meanwhile(run), timeout=30, message="the reply streaming")
            raise RuntimeError("the request fails before its commit")
    except RuntimeError:
        pass
    wait_until(lambda: redis_client().get(run_lease_key(run.pk)) is None, timeout=30, message="the step let go")
    assert not Run.objects.filter(pk=run.pk).exists()
    assert not Message.objects.filter(run_id=run.pk).exists()
    return run


# A run that starts at once in a session that exists (a named chat session, the REST API, a WebSocket) also sends
# step 0 before its writes and commit (run_submit, run_start_locked's `start_locked`): the step waits for the
# commit to read its run. Here the transaction stays open until a worker holds the step.
def _session(tenant, marker: str) -> AgentSession:
    from sessions.services import session_get_or_create

    return session_get_or_create(tenant=tenant.tenant, agent=_assistant(tenant, own_key=False), key=marker)


def _turn(session: AgentSession, text: str) -> Run:
    return run_submit(session=session, content=[{"type": "text", "text": text}], trigger=Run.Trigger.API)


def test_a_session_s_run_sent_before_its_commit_asks_the_model_only_after_it(worker, tenant, fake_requests):
    from django.db import transaction

    marker = f"session-early-{uuid.uuid4().hex[:8]}"
    session = _session(tenant, marker)
    with transaction.atomic():
        run = _turn(session, marker)
        wait_until(lambda: _worker_holds(run.pk), timeout=30, message="a worker holding step 0")
        assert not _asked_model(fake_requests, marker)  # it waits to read the run
        assert _event_kinds(run.pk) == [events.RUN_STARTED]
    wait_until(lambda: Run.objects.get(pk=run.pk).status == Run.Status.SUCCEEDED, timeout=30, message="the run done")
    assert [m.content[0]["text"] for m in Message.objects.filter(run_id=run.pk, role="assistant")] == [f"Echo: {marker}"]
    assert redis_client().get(f"bc:run:{run.pk}:step:0:attempts") == b"1"
    kinds = _event_kinds(run.pk)
    assert [kinds[0], kinds[-1]] == [events.RUN_STARTED, events.RUN_COMPLETED]
    assert kinds.count(events.RUN_STARTED) == 1


def test_a_session_s_run_rolled_back_after_its_step_was_sent_leaves_no_trace(worker, tenant, fake_requests):
    marker = f"session-rolled-back-{uuid.uuid4().hex[:8]}"
    session = _session(tenant, marker)
    _rolled_back_once_a_worker_holds_its_step(lambda: _turn(session, marker))
    assert not _asked_model(fake_requests, marker)
    # The session is as it was: its next turn runs.
    session.refresh_from_db()
    assert session.next_seq == 1
    again = _turn(session, marker + " again")
    wait_until(lambda: Run.objects.get(pk=again.pk).status == Run.Status.SUCCEEDED, timeout=30, message="the next run")
