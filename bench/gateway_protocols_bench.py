#!/usr/bin/env python
"""BeamClaw native protocols benchmark: WebSocket /ws/ and REST + SSE, against the fake Anthropic server.

Reuses bench/gateway_bench.py's stack (fake server, one worker, Daphne) but on its own database
(beamclaw_bench_proto) and Redis db (9), so it can run next to gateway_bench.py. Writes
bench/results/protocols.json and stops every process it started, also on Ctrl-C, SIGTERM or an error.

1. Added latency at concurrency 1: time to first token (TTFT) and the gap between consecutive deltas,
   direct SDK call vs WebSocket chat.send vs REST POST + GET SSE.
2. Zero-loss streams over WebSocket: 100 and 200 overlapping ~10 s runs on 20 sockets; every run's
   deltas must concatenate to the expected text with contiguous event seqs.
3. Noisy neighbour: tenant A queues 500 runs at once; tenant B's runs, sent meanwhile, should wait at
   most about one step, because every tenant has its own Celery queue and the worker takes turns.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import httpx2
from websockets.asyncio.client import connect as ws_connect

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gateway_bench as gb  # noqa: E402

# Own database and Redis db: gateway_bench's helpers read these module globals at call time.
gb.DATABASE_NAME = "beamclaw_bench_proto"
gb.DATABASE_URL = f"postgres:///{gb.DATABASE_NAME}"
gb.REDIS_URL = "redis://127.0.0.1:6379/9"

RESULTS_PATH = gb.ROOT / "bench" / "results" / "protocols.json"
TENANT_B = "benchb"

# 1. Added latency.
LATENCY_TEXT = "Hello from the BeamClaw protocols benchmark, please echo this sentence back."
LATENCY_PROMPT = f"{LATENCY_TEXT} [[deltas=20]][[ttft_ms=20]][[delay_ms=5]]"
LATENCY_REPLY = f"Echo: {LATENCY_TEXT}"
LATENCY_WARMUP = 5
LATENCY_REQUESTS = 100

# 2. Zero-loss streams over WebSocket.
STREAM_LEVELS = (100, 200)
STREAM_SOCKETS = 20
STREAM_DELTAS = 50
STREAM_DIRECTIVES = f"[[deltas={STREAM_DELTAS}]][[delay_ms=200]]"  # 50 x 200 ms: ~10 s, so a level overlaps
STREAM_TIMEOUT_SECONDS = 90.0

# 3. Noisy neighbour.
NOISY_PROMPT_TEXT = "noisy neighbour run"
NOISY_PROMPT = f"{NOISY_PROMPT_TEXT} [[deltas=10]][[delay_ms=50]]"  # one ~0.5 s step
NOISY_A_RUNS = 500
NOISY_B_RUNS = 5
NOISY_B_SPACING_SECONDS = 1.0
DRAIN_TIMEOUT_SECONDS = 120.0

TERMINAL_EVENTS = ("run.completed", "run.failed", "run.aborted")
HTTP_TIMEOUT = httpx2.Timeout(60.0, connect=10.0)


def loadavg() -> str:
    """1, 5 and 15 minute load averages: other jobs on this 2-core machine skew every number."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# --------------------------------------------------------------------------------------------------
# One timed stream, whatever the protocol
# --------------------------------------------------------------------------------------------------


@dataclass
class Trace:
    """Client-side arrival times of one run's deltas (perf_counter seconds)."""

    sent_at: float = 0.0
    delta_times: list[float] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)  # every event's seq (WebSocket)
    delta_seqs: list[int] = field(default_factory=list)
    terminal: str | None = None
    ended_at: float = 0.0
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def add_delta(self, text: str, seq: int | None = None) -> None:
        self.delta_times.append(time.perf_counter())
        self.texts.append(text)
        if seq is not None:
            self.delta_seqs.append(seq)

    def finish(self, event: str) -> None:
        self.terminal, self.ended_at = event, time.perf_counter()
        self.done.set()

    @property
    def ttft(self) -> float | None:
        return self.delta_times[0] - self.sent_at if self.delta_times else None

    @property
    def mean_gap(self) -> float | None:
        """Mean time between consecutive deltas (the fake sends them delay_ms apart)."""
        t = self.delta_times
        return (t[-1] - t[0]) / (len(t) - 1) if len(t) > 1 else None

    @property
    def text(self) -> str:
        return "".join(self.texts)


# --------------------------------------------------------------------------------------------------
# Clients
# --------------------------------------------------------------------------------------------------


async def direct_stream(direct: gb.DirectClient, prompt: str) -> Trace:
    """The fake server straight through the SDK's raw event stream (gb.DirectClient keeps no per-delta
    times, so the loop is repeated here)."""
    trace = Trace(sent_at=time.perf_counter())
    stream = await direct.sdk.messages.create(
        model=gb.DIRECT_MODEL, max_tokens=gb.DIRECT_MAX_TOKENS, messages=[{"role": "user", "content": prompt}], stream=True
    )
    async with stream:
        async for event in stream:
            if event.type == "content_block_delta" and event.delta.type == "text_delta" and event.delta.text:
                trace.add_delta(event.delta.text)
    trace.finish("run.completed")
    return trace


class WsConnection:
    """One /ws/ socket: a reader task routes `res` frames to waiting requests and `event` frames to the
    run they belong to (payload.run_id), so many runs can stream over one socket at once."""

    def __init__(self, url: str, api_key: str):
        self.url, self.api_key = url, api_key
        self.ids = itertools.count(1)
        self.pending: dict[str, asyncio.Future] = {}
        self.runs: dict[str, Trace] = {}
        self.reader: asyncio.Task | None = None

    async def open(self) -> WsConnection:
        self.ws = await ws_connect(self.url, max_size=None, ping_interval=None, open_timeout=30)
        self.reader = asyncio.create_task(self._read())
        await self.request("connect", {"token": self.api_key})
        return self

    async def close(self) -> None:
        await self.ws.close()
        if self.reader:
            self.reader.cancel()

    def trace(self, run_id: str) -> Trace:
        # Events can arrive before the chat.send response that names the run, so either side creates it.
        return self.runs.setdefault(run_id, Trace())

    async def _read(self) -> None:
        async for raw in self.ws:
            frame = json.loads(raw)
            if frame.get("type") == "res":
                future = self.pending.pop(frame["id"], None)
                if future and not future.done():
                    future.set_result(frame)
            elif frame.get("type") == "event" and frame["payload"].get("run_id"):
                trace = self.trace(frame["payload"]["run_id"])
                trace.seqs.append(frame["seq"])
                if frame["event"] == "text.delta":
                    trace.add_delta(frame["payload"]["text"], frame["seq"])
                elif frame["event"] in TERMINAL_EVENTS:
                    trace.finish(frame["event"])

    async def request(self, method: str, params: dict) -> dict:
        request_id = str(next(self.ids))
        future = asyncio.get_running_loop().create_future()
        self.pending[request_id] = future
        await self.ws.send(json.dumps({"type": "req", "id": request_id, "method": method, "params": params}))
        frame = await asyncio.wait_for(future, 30)
        if not frame["ok"]:
            raise RuntimeError(f"{method} failed: {frame['error']}")
        return frame["payload"]

    async def new_session(self, agent: str) -> str:
        return (await self.request("sessions.create", {"agent": agent}))["id"]

    async def send(self, session_id: str, prompt: str) -> Trace:
        """chat.send; returns the run's trace (not waiting for the run to end)."""
        sent_at = time.perf_counter()
        payload = await self.request("chat.send", {"session": session_id, "message": prompt})
        trace = self.trace(payload["run_id"])
        trace.sent_at = sent_at
        return trace


class RestClient:
    """POST /api/sessions/{id}/messages/ (202 + run), then GET /api/runs/{id}/events/ as SSE."""

    def __init__(self, base_url: str, api_key: str, agent: str):
        self.agent = agent
        self.http = httpx2.AsyncClient(
            base_url=f"{base_url}/api",
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=HTTP_TIMEOUT,
            limits=httpx2.Limits(max_connections=1000, max_keepalive_connections=1000),
        )

    async def close(self) -> None:
        await self.http.aclose()

    async def new_session(self) -> str:
        response = await self.http.post("/sessions/", json={"agent": self.agent})
        response.raise_for_status()
        return response.json()["id"]

    async def submit(self, session_id: str, prompt: str) -> tuple[str, float]:
        sent_at = time.perf_counter()
        response = await self.http.post(f"/sessions/{session_id}/messages/", json={"content": prompt})
        if response.status_code != 202:
            raise RuntimeError(f"POST messages: {response.status_code} {response.text[:200]}")
        return response.json()["run"]["id"], sent_at

    async def follow(self, run_id: str, sent_at: float) -> Trace:
        trace = Trace(sent_at=sent_at)
        event = None
        async with self.http.stream("GET", f"/runs/{run_id}/events/") as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:") and event:
                    data = json.loads(line[5:])
                    if event == "text.delta":
                        trace.add_delta(data["text"], data.get("seq"))
                    elif event in TERMINAL_EVENTS or event == "error":
                        trace.finish(event)
                        break
        if not trace.done.is_set():
            trace.finish("eof")
        return trace

    async def stream(self, session_id: str, prompt: str) -> Trace:
        run_id, sent_at = await self.submit(session_id, prompt)
        return await self.follow(run_id, sent_at)

    async def count_runs(self, status: str) -> int:
        response = await self.http.get("/runs/", params={"status": status, "page_size": 1})
        response.raise_for_status()
        return response.json()["count"]


# --------------------------------------------------------------------------------------------------
# 1. Added latency at concurrency 1
# --------------------------------------------------------------------------------------------------


def summarize(traces: list[Trace]) -> dict:
    exact = sum(t.text == LATENCY_REPLY for t in traces)
    return {
        "requests": len(traces),
        "exact": exact,
        "ttft_ms": gb.p50_p99_ms([t.ttft for t in traces if t.ttft is not None]),
        "gap_ms": gb.p50_p99_ms([t.mean_gap for t in traces if t.mean_gap is not None]),
    }


async def measure_latency(direct: gb.DirectClient, ws: WsConnection, rest: RestClient, agent: str) -> dict:
    """Sequential requests per path. Every gateway request gets a fresh session (created before the timer
    starts), so no run ever waits behind the previous one of its session."""

    async def run_path(one_request) -> list[Trace]:
        traces = []
        for index in range(LATENCY_WARMUP + LATENCY_REQUESTS):
            trace = await one_request()
            if index >= LATENCY_WARMUP:
                traces.append(trace)
        return traces

    async def via_ws() -> Trace:
        session_id = await ws.new_session(agent)
        trace = await ws.send(session_id, LATENCY_PROMPT)
        await asyncio.wait_for(trace.done.wait(), 30)
        return trace

    async def via_rest() -> Trace:
        return await rest.stream(await rest.new_session(), LATENCY_PROMPT)

    paths = {}
    for name, one in (("direct", lambda: direct_stream(direct, LATENCY_PROMPT)), ("websocket", via_ws), ("rest_sse", via_rest)):
        print(f"  latency: {name} ... (load {loadavg()})", flush=True)
        paths[name] = summarize(await run_path(one))
        paths[name]["load"] = loadavg()
    base = paths["direct"]
    for name, row in paths.items():
        row["added_ttft_ms"] = {q: _sub(row["ttft_ms"][q], base["ttft_ms"][q]) for q in ("p50", "p99")}
        row["added_gap_ms"] = {q: _sub(row["gap_ms"][q], base["gap_ms"][q]) for q in ("p50", "p99")}
    return paths


def _sub(a, b):
    return None if a is None or b is None else round(a - b, 2)


# --------------------------------------------------------------------------------------------------
# 2. Zero-loss streams over WebSocket
# --------------------------------------------------------------------------------------------------


def stream_text(level: int, index: int) -> str:
    """Unique per run, so a delta delivered to the wrong run shows as a mismatch; >= 50 chars so the fake
    can split it into 50 deltas."""
    return f"level {level} run {index:04d}: the quick brown fox jumps over the lazy dog, twice over, quick quick"


def check_run(trace: Trace, expected: str) -> dict:
    unique = set(trace.delta_seqs)
    all_seqs = sorted(trace.seqs)
    contiguous = bool(all_seqs) and all_seqs == list(range(all_seqs[0], all_seqs[0] + len(all_seqs)))
    return {
        # Characters, not events: deltas that reach the worker together (one network read) are one event.
        "ok": trace.terminal == "run.completed" and trace.text == expected and contiguous,
        "lost": max(0, len(expected) - len(trace.text)),
        "duplicated": len(trace.delta_seqs) - len(unique),
        "contiguous": contiguous,
        "terminal": trace.terminal,
    }


async def measure_ws_streams(url: str, api_key: str, agent: str, level: int) -> dict:
    sockets = [await WsConnection(url, api_key).open() for _ in range(STREAM_SOCKETS)]
    try:
        # Sessions first (untimed): runs are spread round-robin over the sockets.
        plan = [(sockets[i % STREAM_SOCKETS], i) for i in range(level)]
        sessions = await asyncio.gather(*(conn.new_session(agent) for conn, _ in plan))
        prompts = [f"{stream_text(level, i)} {STREAM_DIRECTIVES}" for i in range(level)]

        async def send_all(conn: WsConnection) -> list[tuple[int, Trace]]:
            # Each socket sends its chat.sends one after the other, without waiting for the runs to end.
            return [(i, await conn.send(sessions[i], prompts[i])) for (c, i) in plan if c is conn]

        began = time.perf_counter()
        sent = [pair for pairs in await asyncio.gather(*(send_all(s) for s in sockets)) for pair in pairs]
        send_seconds = time.perf_counter() - began
        try:
            async with asyncio.timeout(STREAM_TIMEOUT_SECONDS):
                await asyncio.gather(*(trace.done.wait() for _, trace in sent))
        except TimeoutError:
            pass  # the unfinished runs are reported as not ok below
        checks = [check_run(trace, f"Echo: {stream_text(level, i)}") for i, trace in sent]
        as_results = [
            gb.StreamResult(t.sent_at, t.delta_times[0] if t.delta_times else None, t.ended_at or time.perf_counter(),
                            t.text, len(t.texts), t.done.is_set(), None)
            for _, t in sent
        ]
        return {
            "runs": level,
            "sockets": STREAM_SOCKETS,
            "ok": sum(c["ok"] for c in checks),
            "lost_chars": sum(c["lost"] for c in checks),
            "duplicated_deltas": sum(c["duplicated"] for c in checks),
            "non_contiguous_runs": sum(not c["contiguous"] for c in checks),
            "unfinished_runs": sum(c["terminal"] is None for c in checks),
            "peak_overlap": gb.peak_overlap(as_results),
            "send_seconds": round(send_seconds, 2),
            "wall_seconds": round(time.perf_counter() - began, 2),
            "ttft_ms": gb.p50_p99_ms([t.ttft for _, t in sent if t.ttft is not None]),
            "load": loadavg(),
        }
    finally:
        for conn in sockets:
            await conn.close()


# --------------------------------------------------------------------------------------------------
# 3. Noisy neighbour
# --------------------------------------------------------------------------------------------------


async def measure_noisy_neighbour(direct: gb.DirectClient, rest_a: RestClient, rest_b: RestClient) -> dict:
    # The reference: what the same run costs straight against the fake (TTFT and one step's duration).
    references = [await direct_stream(direct, NOISY_PROMPT) for _ in range(10)]
    direct_ttft = gb.percentile([t.ttft for t in references], 50)
    step_seconds = gb.percentile([t.ended_at - t.sent_at for t in references], 50)

    # Sessions up front, untimed: the burst is then only message POSTs.
    # At most 20 requests in flight: 500 simultaneous connections overflow Daphne's listen backlog.
    limit = asyncio.Semaphore(20)

    async def bounded_session() -> str:
        async with limit:
            return await rest_a.new_session()

    a_sessions = await asyncio.gather(*(bounded_session() for _ in range(NOISY_A_RUNS)))
    b_sessions = [await rest_b.new_session() for _ in range(NOISY_B_RUNS)]

    began = time.perf_counter()
    pending_sessions = iter(a_sessions)

    async def a_lane():
        for session_id in pending_sessions:  # lanes share one iterator: each session gets one run
            await rest_a.submit(session_id, NOISY_PROMPT)

    await asyncio.gather(*(a_lane() for _ in range(20)))
    a_submit_seconds = time.perf_counter() - began

    async def a_backlog() -> int:
        running, queued = await asyncio.gather(rest_a.count_runs("running"), rest_a.count_runs("queued"))
        return running + queued

    async def one_b(index: int) -> dict:
        await asyncio.sleep(index * NOISY_B_SPACING_SECONDS)
        backlog = await a_backlog()  # A's unfinished runs right before B submits
        trace = await rest_b.stream(b_sessions[index], NOISY_PROMPT)
        return {
            "a_backlog": backlog,
            "ttft_ms": round(trace.ttft * 1000, 1) if trace.ttft else None,
            "queue_wait_ms": round((trace.ttft - direct_ttft) * 1000, 1) if trace.ttft else None,
            "ok": trace.terminal == "run.completed",
        }

    async def wait_for_drain() -> float | None:
        deadline = time.perf_counter() + DRAIN_TIMEOUT_SECONDS
        while time.perf_counter() < deadline:
            if await a_backlog() == 0:
                return time.perf_counter() - began
            await asyncio.sleep(0.25)
        return None

    b_runs, drain_seconds = await asyncio.gather(
        asyncio.gather(*(one_b(i) for i in range(NOISY_B_RUNS))), wait_for_drain()
    )
    waits = [b["queue_wait_ms"] for b in b_runs if b["queue_wait_ms"] is not None]
    return {
        "a_runs": NOISY_A_RUNS,
        "a_submit_seconds": round(a_submit_seconds, 2),
        "a_drain_seconds": None if drain_seconds is None else round(drain_seconds, 2),
        "step_ms": round(step_seconds * 1000, 1),
        "direct_ttft_ms": round(direct_ttft * 1000, 1),
        "b_runs": b_runs,
        "b_queue_wait_ms": {"p50": gb.percentile(waits, 50), "max": max(waits) if waits else None},
        "load": loadavg(),
    }


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------


def print_report(results: dict) -> None:
    lat = results["latency"]
    print(f"\n1. Added latency, concurrency 1, {LATENCY_REQUESTS} requests per path "
          f"(20 deltas, fake ttft 20 ms, 5 ms apart); ms")
    rows = [
        [name, f"{r['exact']}/{r['requests']}", gb.ms(r["ttft_ms"]["p50"]), gb.ms(r["ttft_ms"]["p99"]),
         gb.signed_ms(r["added_ttft_ms"]["p50"]), gb.signed_ms(r["added_ttft_ms"]["p99"]),
         gb.ms(r["gap_ms"]["p50"]), gb.ms(r["gap_ms"]["p99"]), r["load"]]
        for name, r in lat.items()
    ]
    print(gb.format_table(["path", "exact", "ttft p50", "ttft p99", "added p50", "added p99", "gap p50", "gap p99", "load"], rows))

    print(f"\n2. WebSocket streams, {STREAM_DELTAS} deltas x 200 ms each (~10 s), over {STREAM_SOCKETS} sockets")
    rows = [
        [s["runs"], f"{s['ok']}/{s['runs']}", s["lost_chars"], s["duplicated_deltas"], s["non_contiguous_runs"],
         s["unfinished_runs"], s["peak_overlap"], f"{s['send_seconds']:.1f}", gb.ms(s["ttft_ms"]["p50"]),
         gb.ms(s["ttft_ms"]["p99"]), s["load"]]
        for s in results["ws_streams"]
    ]
    print(gb.format_table(["runs", "ok", "lost chars", "dup events", "seq gaps", "unfinished", "peak overlap", "send s",
                           "ttft p50", "ttft p99", "load"], rows))

    noisy = results["noisy_neighbour"]
    print(f"\n3. Noisy neighbour: A submits {noisy['a_runs']} runs in {noisy['a_submit_seconds']} s, drained after "
          f"{noisy['a_drain_seconds']} s; one step = {noisy['step_ms']} ms, direct ttft = {noisy['direct_ttft_ms']} ms")
    rows = [[i + 1, b["a_backlog"], gb.ms(b["ttft_ms"]), gb.ms(b["queue_wait_ms"]), "yes" if b["ok"] else "NO"]
            for i, b in enumerate(noisy["b_runs"])]
    print(gb.format_table(["B run", "A backlog", "B ttft", "B queue wait", "ok"], rows))
    wait = noisy["b_queue_wait_ms"]
    print(f"B queue wait p50 {gb.ms(wait['p50'])} ms, max {gb.ms(wait['max'])} ms "
          f"(claim: <= about one step, {noisy['step_ms']} ms)   load {noisy['load']}")


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------


async def measure(services: gb.Services, agent: str, key_a: str, key_b: str, agent_b: str) -> dict:
    watchdog = asyncio.create_task(gb.watch_children(services.children))
    direct = gb.DirectClient(services.fake_url)
    ws_url = services.gateway_url.replace("http://", "ws://") + "/ws/"
    rest_a = RestClient(services.gateway_url, key_a, agent)
    rest_b = RestClient(services.gateway_url, key_b, agent_b)
    ws = await WsConnection(ws_url, key_a).open()
    try:
        async def body():
            print("1. added latency ...", flush=True)
            latency = await measure_latency(direct, ws, rest_a, agent)
            streams = []
            for level in STREAM_LEVELS:
                print(f"2. {level} WebSocket streams ... (load {loadavg()})", flush=True)
                streams.append(await measure_ws_streams(ws_url, key_a, agent, level))
            print(f"3. noisy neighbour ... (load {loadavg()})", flush=True)
            noisy = await measure_noisy_neighbour(direct, rest_a, rest_b)
            return {"latency": latency, "ws_streams": streams, "noisy_neighbour": noisy}

        done, _ = await asyncio.wait({asyncio.create_task(body()), watchdog}, return_when=asyncio.FIRST_COMPLETED)
        return done.pop().result()  # the watchdog only ever finishes by raising
    finally:
        watchdog.cancel()
        await ws.close()
        await rest_a.close()
        await rest_b.close()
        await direct.close()


def main() -> int:
    began = time.monotonic()
    log_dir = Path(tempfile.mkdtemp(prefix="beamclaw-proto-bench-"))
    print(f"logs: {log_dir}   load at start: {loadavg()}", flush=True)
    env = gb.base_env()
    print(f"preparing {gb.DATABASE_URL} and {gb.REDIS_URL} ...", flush=True)
    agent, key_a = gb.prepare_state(env)  # tenant A = gb's "bench", max_concurrent_runs already 100000
    # Tenant B (default caps) must exist before the worker starts so it consumes B's queue from the start.
    created_b = json.loads(gb.manage(env, "create_tenant", TENANT_B, "--agent", gb.AGENT_SLUG))

    children: list[gb.Process] = []
    try:
        print("starting the fake Anthropic server, a worker and Daphne ...", flush=True)
        services = gb.start_services(env, log_dir, children, gb.WORKER_CONCURRENCY)
        results = asyncio.run(measure(services, agent, key_a, created_b["api_key"], created_b["agent"]))
    finally:
        gb.stop_all(children)

    print_report(results)
    RESULTS_PATH.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_PATH.write_text(json.dumps({
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "worker_concurrency": gb.WORKER_CONCURRENCY,
        "load_at_end": loadavg(),
        "logs": str(log_dir),
        **results,
    }, indent=2) + "\n")
    print(f"\nresults: {RESULTS_PATH.relative_to(gb.ROOT)}   logs: {log_dir}   took {time.monotonic() - began:.0f} s")
    return 0


if __name__ == "__main__":
    gb.run(main)
