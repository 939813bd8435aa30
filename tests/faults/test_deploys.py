"""Rolling deploys and a killed web process, on the shared test stack with the production timings.

- SIGTERM to a worker (what `docker compose up` and Kubernetes send) hands its running steps back at once:
  another worker continues them without waiting out the 30 s lease, and the old worker exits promptly.
- The web process SIGKILLed under an SSE reader: the reader reconnects to a second web process with
  Last-Event-ID and gets the rest, each event once.
- SIGTERM to a web process drains it: WebSockets close with 1012, SSE readers are told to reconnect,
  OpenAI streams finish within the drain time or are told the server is restarting; so are plain
  completions, which the `openai` client then does not send again (that would start the run a second time).
"""

import json
import sys
import threading
import time
import uuid

import httpx
import openai
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from sessions.models import Message, Run
from tests.conftest import sse_events, start_daphne, wait_until
from tests.faults.clients import SLOW_REPLY, StreamedReply

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]


def _exactly_once(run_id: str, prompt: str) -> bool:
    run = Run.objects.get(pk=run_id)
    transcript = list(Message.objects.filter(session=run.session_id).values_list("role", "step", "content"))
    users = [m for m in transcript if m[0] == "user" and prompt in json.dumps(m[2])]
    steps = [m[1] for m in transcript if m[0] == "assistant"]
    return run.status == Run.Status.SUCCEEDED and len(users) == 1 and len(steps) == len(set(steps)) >= 1


def test_sigterm_hands_running_steps_to_another_worker(gateway, tenant, fleet, fake_llm):
    old = fleet("deploy-old")
    # The fake holds each stream after its 6th delta until the test releases it, so the streams are still
    # open when the new worker is up and the old one gets its SIGTERM, however long a worker takes to start
    # (a worker on the suite's database consumes hundreds of tenant queues by then, and once took 9 s).
    hold = f"deploy-{uuid.uuid4().hex[:8]}"
    replies = [StreamedReply(gateway, tenant.headers, f"rolling deploy {n} one two three", model="assistant",
                             directives=f"[[deltas=20]] [[delay_ms=50]] [[hold={hold}:6]]").start() for n in range(3)]
    wait_until(lambda: all(r.chunks >= 3 for r in replies), timeout=60, message="the old worker to be streaming")
    new = fleet("deploy-new")

    assert not any(r.done for r in replies)
    old.terminate()
    sigterm_at = time.monotonic()
    wait_until(lambda: not old.alive, timeout=60, message="the old worker to exit after SIGTERM")
    exited_after = time.monotonic() - sigterm_at
    httpx.post(f"{fake_llm}/_fake/release", params={"key": hold}).raise_for_status()

    for reply in replies:
        reply.join()
        assert reply.errors == [] and reply.done, reply.errors
        assert reply.text == f"Echo: {reply.prompt}", "the client saw the reply once, with nothing lost or repeated"
    continued_after = time.monotonic() - sigterm_at
    assert all(_exactly_once(r.run_id, r.prompt) for r in replies)

    # Handed back, not recovered by the reaper after the lease lapsed: the old worker says so for each
    # step, and the new one took them from the queue.
    old_log = old.log_path.read_text()
    assert all(f"run {r.run_id} step 0 handed back" in old_log for r in replies), old.log_tail()
    assert "lost its worker" not in new.log_path.read_text()
    print(f"\n[fault report] worker SIGTERM: {len(replies)} streaming runs handed over, exited after "
          f"{exited_after:.1f}s, every reply complete {continued_after:.1f}s after the signal")


def test_sigterm_hands_a_step_waiting_for_a_whole_reply_to_another_worker(gateway, tenant, fleet, fake_llm):
    """A plain chat completion's step asks the model for the reply whole, so it reads nothing until the model
    has written all of it: the drain cuts that wait too, and the step goes to another worker at once."""
    old = fleet("deploy-old-whole")
    marker = uuid.uuid4().hex
    session_key = f"agent:assistant:deploy-whole-{marker}"
    body = {"model": "assistant", "messages": [{"role": "user", "content": f"plain deploy {marker} [[hold={marker}:0]]"}]}
    answers: list[httpx.Response] = []
    request = threading.Thread(target=lambda: answers.append(httpx.post(
        f"{gateway}/v1/chat/completions", headers={**tenant.headers, "X-Session-Key": session_key}, json=body,
        timeout=240)))
    request.start()
    try:
        def asked() -> int:
            received = httpx.get(f"{fake_llm}/_fake/requests", params={"limit": 200}).json()
            return sum(marker in json.dumps(r["body"]) and r["body"].get("stream") is False for r in received)

        wait_until(lambda: asked() == 1, timeout=60, message="the old worker to wait for the whole reply")
        new = fleet("deploy-new-whole")
        old.terminate()
        wait_until(lambda: not old.alive, timeout=60, message="the old worker to exit after SIGTERM")
        wait_until(lambda: asked() == 2, timeout=60, message="the new worker to ask the model again")
    finally:
        httpx.post(f"{fake_llm}/_fake/release", params={"key": marker}).raise_for_status()
        request.join()
    assert answers[0].status_code == 200, answers[0].text
    assert answers[0].json()["choices"][0]["message"]["content"] == f"Echo: plain deploy {marker}"
    run_id = answers[0].headers["x-run-id"]
    assert _exactly_once(run_id, marker)
    assert f"run {run_id} step 0 handed back" in old.log_path.read_text(), old.log_tail()
    assert "lost its worker" not in new.log_path.read_text()


class _PlainCompletions:
    """Two plain (not streamed) chat completions of `prompt`, whose replies take longer than a drain: one
    from the official `openai` client with its default retries, counting what it sends, and one with an
    Idempotency-Key, answered to httpx."""

    def __init__(self, url: str, api_key: str, prompt: str):
        self.prompt = prompt
        self.client_sends = 0
        self.client_error = None
        self.keyed_answer = None

        def counted(request):
            self.client_sends += 1

        client = openai.OpenAI(base_url=f"{url}/v1", api_key=api_key,
                               http_client=httpx.Client(timeout=120, event_hooks={"request": [counted]}))
        messages = [{"role": "user", "content": f"{prompt} [[deltas=60]] [[delay_ms=250]]"}]

        def by_the_client():
            try:
                client.chat.completions.create(model="assistant", messages=messages)
            except openai.APIStatusError as exc:
                self.client_error = exc

        def with_a_key():
            self.keyed_answer = httpx.post(
                f"{url}/v1/chat/completions", json={"model": "assistant", "messages": messages}, timeout=120,
                headers={"Authorization": f"Bearer {api_key}", "Idempotency-Key": uuid.uuid4().hex},
            )

        self.threads = [threading.Thread(target=by_the_client), threading.Thread(target=with_a_key)]
        for thread in self.threads:
            thread.start()

    def runs_started(self) -> int:
        return Run.objects.filter(messages__content__icontains=self.prompt.split()[2]).distinct().count()

    def join(self) -> None:
        for thread in self.threads:
            thread.join(120)


def _sse_until_broken(response) -> list[dict]:
    """The SSE events of a streaming response until it ends or its web process dies under it."""
    received = []
    try:
        received.extend(sse_events(response.iter_lines()))
    except httpx.HTTPError:
        pass
    return received


def test_web_sigkilled_mid_stream_reader_resumes_on_another_web(gateway, worker, tenant, service_env, log_dir):
    doomed, doomed_url = start_daphne("daphne-doomed", service_env, log_dir)
    prompt = "web killed alpha beta gamma delta"
    api = httpx.Client(base_url=f"{gateway}/api", headers=tenant.headers, timeout=30)
    session_id = api.post("/sessions/", json={"agent": "assistant"}).json()["id"]
    run_id = api.post(f"/sessions/{session_id}/messages/", json={"content": f"{prompt} {SLOW_REPLY}"}).json()["run"]["id"]

    before: list[dict] = []
    with httpx.stream("GET", f"{doomed_url}/api/runs/{run_id}/events/", headers=tenant.headers, timeout=60) as response:
        for event in sse_events(response.iter_lines()):
            before.append(event)
            if sum(e["event"] == "text.delta" for e in before) >= 4:
                doomed.kill()
                break
    assert not doomed.alive

    # What EventSource does by itself: reconnect (here to the other web) with the last id it saw.
    last_id = before[-1]["id"]
    with httpx.stream(
        "GET", f"{gateway}/api/runs/{run_id}/events/", headers={**tenant.headers, "Last-Event-ID": str(last_id)}, timeout=60
    ) as response:
        after = _sse_until_broken(response)

    ids = [e["id"] for e in before + after]
    assert ids == list(range(1, len(ids) + 1)), "every event once, in order, across the two web processes"
    assert after[-1]["event"] == "run.completed"
    text = "".join(e["data"]["text"] for e in before + after if e["event"] == "text.delta")
    assert text == f"Echo: {prompt}"


def test_web_sigterm_drains_open_streams(gateway, worker, tenant, service_env, log_dir):
    old_web, old_url = start_daphne("daphne-old", service_env, log_dir)
    api = httpx.Client(base_url=f"{gateway}/api", headers=tenant.headers, timeout=30)
    short = StreamedReply(old_url, tenant.headers, "short drain one two", model="assistant").start()
    # About 15 s of streaming: longer than the drain time (8 s).
    long_prompt = "long drain " + " ".join(f"w{i}" for i in range(60))
    long = StreamedReply(old_url, tenant.headers, long_prompt, model="assistant", directives="[[deltas=60]] [[delay_ms=250]]").start()
    session_id = api.post("/sessions/", json={"agent": "assistant"}).json()["id"]
    followed = api.post(f"/sessions/{session_id}/messages/", json={"content": f"followed over sse {SLOW_REPLY}"}).json()["run"]["id"]
    socket = connect(old_url.replace("http://", "ws://") + "/ws/", open_timeout=10)
    socket.send(json.dumps({"type": "req", "id": "c", "method": "connect", "params": {"token": tenant.api_key}}))
    assert json.loads(socket.recv(timeout=10))["ok"]
    plain = _PlainCompletions(old_url, tenant.api_key, f"plain drain {uuid.uuid4().hex} " + long_prompt)
    with httpx.stream("GET", f"{old_url}/api/runs/{followed}/events/", headers=tenant.headers, timeout=60) as response:
        wait_until(lambda: short.chunks >= 2 and long.chunks >= 2, timeout=30, message="the streams to be under way")
        wait_until(lambda: plain.runs_started() == 2, timeout=30, message="the plain completions' runs to start")
        old_web.terminate()
        before = _sse_until_broken(response)
    assert before and before[-1]["event"] != "run.completed"
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            socket.recv(timeout=30)
    assert closed.value.rcvd.code == 1012

    # The SSE reader was told to reconnect; it does so on the other web process and gets the rest.
    with httpx.stream(
        "GET", f"{gateway}/api/runs/{followed}/events/",
        headers={**tenant.headers, "Last-Event-ID": str(before[-1]["id"])}, timeout=60,
    ) as response:
        after = _sse_until_broken(response)
    assert [e["id"] for e in before + after] == list(range(1, len(before) + len(after) + 1))
    assert after[-1]["event"] == "run.completed"

    # The short OpenAI stream finished within the drain; the long one was told the server is restarting,
    # and its run went on to the end elsewhere.
    short.join()
    assert short.errors == [] and short.text == f"Echo: {short.prompt}"
    long.join()
    assert [e["code"] for e in long.errors] == ["server_restarting"] and long.done
    wait_until(lambda: api.get(f"/runs/{long.run_id}/").json()["status"] == "succeeded", timeout=60,
               message="the long run to finish after its web process left")

    # The plain completions outlived the drain too: told the server is restarting and where their runs'
    # results are. The `openai` client, with its default retries, sent its request once: sent again, it would
    # start the run a second time. With an Idempotency-Key, which finds the same run, a resend is welcome.
    plain.join()
    assert plain.client_error.status_code == 503 and plain.client_error.code == "server_restarting"
    assert plain.client_sends == 1
    keyed = plain.keyed_answer
    assert keyed.status_code == 503 and keyed.json()["error"]["code"] == "server_restarting"
    assert "x-should-retry" not in keyed.headers and keyed.headers["retry-after"] == "1"
    for run_id in (plain.client_error.response.headers["x-run-id"], keyed.headers["x-run-id"]):
        wait_until(lambda: api.get(f"/runs/{run_id}/").json()["status"] == "succeeded", timeout=60,
                   message="a plain completion's run to finish after its web process left")
    assert plain.runs_started() == 2
    wait_until(lambda: not old_web.alive, timeout=30, message="the old web process to exit")
