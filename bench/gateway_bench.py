#!/usr/bin/env python
"""BeamClaw gateway benchmark against the fake Anthropic server (see bench/README.md).

One command, self-contained: it recreates and migrates its own database (beamclaw_bench), flushes its own
Redis db (14), starts the fake Anthropic server, the workers (as `make run`: one per core, up to two) and Daphne, measures, prints a table, writes
bench/results/latest.json and stops every process it started, also on Ctrl-C, SIGTERM or an error.

1. Added latency: the same streaming request through the gateway (POST /v1/chat/completions, parsed
   by hand on httpx2, the HTTP client the official SDKs run on) and straight to the fake server
   (anthropic.AsyncAnthropic); p50/p99 of time to first token and of total stream time, at concurrency 1
   and 50.
2. Capacity: bursts of N simultaneous ~1 s streams; every stream must carry exactly the expected text, end
   with [DONE] and carry no error. Each text chunk's gap over the fake's pace is shown next to the same
   burst's sent straight to the fake.
3. CPU per stream of every process on the path, read from /proc around each measured batch, to show
   where the gateway's time goes.
4. Time to first token at concurrency 1 split into segments, using the moment the fake server received
   each request.

The load generator is this process: one asyncio loop, so the client side uses at most one core of a
machine it shares with Daphne, the worker, the fake server, Redis and Postgres.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import anthropic
import httpx2
import psycopg
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script, only bench/ is on the path
from tests.procs import Process, free_port, wait_ready  # noqa: E402

RESULTS_PATH = ROOT / "bench" / "results" / "latest.json"
# The checkout whose gateway is measured: this one, or another (an older commit's worktree, to compare with).
CODE_ROOT = Path(os.environ.get("BEAMCLAW_BENCH_CODE") or ROOT).resolve()

DATABASE_NAME = "beamclaw_bench"
DATABASE_URL = f"postgres:///{DATABASE_NAME}"
REDIS_URL = "redis://127.0.0.1:6379/14"
TENANT_SLUG = "bench"
AGENT_SLUG = "bench"
# Threads in the one worker (raised to the largest burst if that is larger), so every stream of a burst
# can run at once.
WORKER_CONCURRENCY = 320
# As `make run` (scripts/run_all.sh): one worker process per core, up to two.
WORKER_PROCESSES = min(os.cpu_count() or 1, 2)

# The direct path sends what the worker sends for an agent with default settings.
DIRECT_MODEL = "claude-sonnet-4-5"
DIRECT_MAX_TOKENS = 8192

# 1. Added latency.
LATENCY_TEXT = "Hello from the BeamClaw benchmark, please echo this sentence back."
LATENCY_DIRECTIVES = "[[deltas=20]][[ttft_ms=20]][[delay_ms=2]]"
LATENCY_PROMPT = f"{LATENCY_TEXT} {LATENCY_DIRECTIVES}"
LATENCY_REPLY = f"Echo: {LATENCY_TEXT}"
LATENCY_DELTAS = 20
LATENCY_PLAN = ((1, 200), (50, 500))  # (concurrency, measured requests per path)
# Sequential requests tagged so the fake server's receive time can be matched to each (section 4).
BREAKDOWN_REQUESTS = 50

# 2. Capacity.
CAPACITY_LEVELS = (50, 100, 200, 300)
CAPACITY_DELTAS = 50
CAPACITY_DELAY_MS = 20  # 50 deltas x 20 ms: ~1 s streams, about the pace of a real model's tokens
CAPACITY_REPLY_CHARS = 200

TARGET_ADDED_TTFT_P50_MS = 15.0
TARGET_ZERO_LOSS_STREAMS = 200

REQUEST_TIMEOUT = httpx2.Timeout(60.0, connect=10.0)
BATCH_TIMEOUT_SECONDS = 120.0  # no batch comes close when things work; this bounds a hang
STARTUP_TIMEOUT_SECONDS = 60.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# The SDK warns on every call with a dated model id; the id does not matter to the fake server.
warnings.filterwarnings("ignore", message=r"The model '.*' is deprecated")


# --------------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------------


def base_env() -> dict:
    """The environment of every child: the bench database and Redis db, quiet logging."""
    env = dict(os.environ)
    env.pop("CELERY_BROKER_URL", None)  # the broker then follows REDIS_URL
    env.update(
        DATABASE_URL=DATABASE_URL,
        REDIS_URL=REDIS_URL,
        DJANGO_SETTINGS_MODULE="beamclaw_project.settings",
        # Per-request INFO lines would be written while we measure; warnings and errors still show.
        LOG_LEVEL="WARNING",
        # The benchmark sends thousands of requests a minute on one key. A limit it never reaches, rather
        # than 0 (off), keeps the per-request check in the measured path, as in a default deployment.
        BEAMCLAW_RATE_LIMIT_PER_MINUTE="1000000",
    )
    return env


def manage(env: dict, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=CODE_ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-15:])
        raise RuntimeError(f"manage.py {' '.join(args)} failed; its last lines:\n{tail}")
    return result.stdout


def prepare_state(env: dict) -> tuple[str, str]:
    """Recreate and migrate the bench database, flush the bench Redis db, and return (agent, api key).

    Starting empty keeps runs reproducible: runs an interrupted benchmark left "running" would otherwise
    be picked up by the new worker's reaper in the middle of a measurement. The tenant is created before
    the worker starts, so the worker consumes its queue from the start.
    """
    with psycopg.connect(dbname="postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DATABASE_NAME}" WITH (FORCE)')
    manage(env, "ensure_database")
    manage(env, "migrate", "--noinput", "-v", "0")
    redis.Redis.from_url(REDIS_URL).flushdb()
    created = json.loads(manage(env, "create_tenant", TENANT_SLUG, "--agent", AGENT_SLUG))
    # Tenants may run 10 runs at once by default; the excess waits its turn. The capacity test is about
    # what one worker sustains, so the tenant's own cap must stay out of the way.
    raise_cap = (
        "from tenants.models import Tenant; "
        f"Tenant.objects.filter(slug={TENANT_SLUG!r}).update(max_concurrent_runs=100_000)"
    )
    manage(env, "shell", "-c", raise_cap)
    return created["agent"], created["api_key"]


@dataclass
class Services:
    fake_url: str
    gateway_url: str
    children: list[Process]


def start_fake_server(env: dict, log_dir: Path) -> tuple[Process, str]:
    argv = [sys.executable, "-m", "tests.fakes.anthropic_server", "--port", "0"]
    fake = Process("fake-llm", argv, env, log_dir).start()

    def listening_port():
        match = re.search(r"LISTENING (\d+)", fake.log_path.read_text(errors="replace"))
        return match and match.group(1)

    port = wait_ready(
        listening_port, what="the fake Anthropic server", processes=[fake], timeout=STARTUP_TIMEOUT_SECONDS
    )
    return fake, f"http://127.0.0.1:{port}"


def start_services(env: dict, log_dir: Path, started: list[Process], worker_concurrency: int) -> Services:
    """Start the fake server, the workers (WORKER_PROCESSES) and Daphne; each is appended to `started` as soon
    as it runs, so the caller can stop whatever did start if a later one fails."""
    fake, fake_url = start_fake_server(env, log_dir)
    started.append(fake)
    service_env = dict(env, ANTHROPIC_BASE_URL=fake_url, ANTHROPIC_API_KEY="bench-key")
    for n in range(1, WORKER_PROCESSES + 1):
        suffix = "" if n == 1 else str(n)
        worker_argv = [
            sys.executable, "manage.py", "worker", "-c", str(worker_concurrency), "-n", f"bench{suffix}@%h", "-l", env["LOG_LEVEL"],
        ]
        started.append(Process(f"worker{suffix}", worker_argv, service_env, log_dir, cwd=CODE_ROOT).start())
    port = free_port()
    daphne_argv = [
        sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "beamclaw_project.asgi:application",
    ]
    started.append(Process("daphne", daphne_argv, service_env, log_dir, cwd=CODE_ROOT).start())
    gateway_url = f"http://127.0.0.1:{port}"

    def worker_ready() -> bool:
        try:
            response = httpx2.get(f"{gateway_url}/health", timeout=2)
        except httpx2.HTTPError:
            return False
        return response.status_code == 200 and response.json()["checks"]["workers"].get("count", 0) >= WORKER_PROCESSES

    wait_ready(
        worker_ready, what="Daphne with the workers behind it (GET /health)", processes=started,
        timeout=STARTUP_TIMEOUT_SECONDS,
    )
    return Services(fake_url=fake_url, gateway_url=gateway_url, children=started)


def stop_all(children: list[Process]) -> None:
    # Entry points first, the fake server last, so nothing in flight sees a dead upstream.
    for child in reversed(children):
        child.stop()


async def watch_children(children: list[Process]) -> None:
    """Raise as soon as a service dies, rather than letting the requests wait out their timeouts."""
    while True:
        for child in children:
            child.ensure_alive()
        await asyncio.sleep(0.5)


class Profiler:
    """py-spy sampling Daphne and the worker for the whole measurement (--profile).

    --gil samples only the thread holding the GIL, i.e. where Python CPU time goes; without it the
    worker's hundreds of threads waiting on sockets would swamp the profile. py-spy costs CPU on the same
    two cores, so the numbers of a profiled run are worse than those of a plain one.
    """

    def __init__(self, services: Services, log_dir: Path):
        search_path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        py_spy = shutil.which("py-spy", path=search_path)
        if py_spy is None:
            raise RuntimeError("--profile needs py-spy: pip install py-spy")
        self.outputs: list[Path] = []
        self.processes: list[subprocess.Popen] = []
        for child in services.children:
            if child.name not in ("daphne", "worker"):
                continue
            output = log_dir / f"{child.name}.collapsed.txt"
            argv = [
                py_spy, "record", "--gil", "--nonblocking", "--format", "raw", "--rate", "100",
                "-o", str(output), "--pid", str(child.pid),
            ]
            with open(log_dir / f"py-spy-{child.name}.log", "ab") as log:
                process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            self.processes.append(process)
            self.outputs.append(output)

    def stop(self) -> list[Path]:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        for process in self.processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
        return self.outputs


# --------------------------------------------------------------------------------------------------
# CPU accounting
# --------------------------------------------------------------------------------------------------


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), 0 if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()  # the command name may contain spaces; it ends at the last ")"
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy (all cores, everything but idle and iowait)."""
    user, nice, system, idle, iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


class CpuMeter:
    """CPU seconds used by every process on the request path, read from /proc (Linux).

    Redis and Postgres serve anything else running on this machine too; for Postgres only the backends
    connected to the bench database count. "other" is the rest of the machine: Postgres's background
    processes, py-spy when profiling, and whatever else runs meanwhile (another test suite, say), which
    competes for the same two cores and skews every number.
    """

    def __init__(self, services: Services):
        self.pids: dict[str, list[int]] = {}
        for child in services.children:  # (the workers, worker, worker2…, count as one)
            self.pids.setdefault("worker" if child.name.startswith("worker") else child.name, []).append(child.pid)
        self.redis_pid = redis.Redis.from_url(REDIS_URL).info("server")["process_id"]
        self.pg = psycopg.connect(dbname=DATABASE_NAME, autocommit=True)

    def close(self) -> None:
        self.pg.close()

    def snapshot(self) -> dict[str, dict[int, float]]:
        """{process name: {pid: cpu seconds}}; Postgres has one pid per backend."""
        usage = {name: {pid: process_cpu_seconds(pid) for pid in pids} for name, pids in self.pids.items()}
        usage["client"] = {os.getpid(): sum(os.times()[:2])}
        usage["redis"] = {self.redis_pid: process_cpu_seconds(self.redis_pid)}
        backends = self.pg.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", [DATABASE_NAME]
        ).fetchall()
        usage["postgres"] = {pid: process_cpu_seconds(pid) for (pid,) in backends}
        usage["machine"] = {0: machine_busy_seconds()}
        return usage

    @staticmethod
    def used(before: dict, after: dict) -> dict[str, float]:
        """CPU seconds per process name between two snapshots (a backend that appeared counts from 0),
        plus "other": the machine's busy time that none of them accounts for."""
        used = {
            name: sum(seconds - before.get(name, {}).get(pid, 0.0) for pid, seconds in pids.items())
            for name, pids in after.items()
        }
        machine = used.pop("machine")
        used["other"] = max(0.0, machine - sum(used.values()))
        return used


# --------------------------------------------------------------------------------------------------
# Clients: one streaming request each, timed
# --------------------------------------------------------------------------------------------------


@dataclass
class StreamResult:
    started_at: float  # perf_counter() when the request was sent
    first_token_at: float | None  # ... when the first non-empty text arrived
    ended_at: float  # ... when the stream ended (or failed)
    text: str
    deltas: int  # non-empty text pieces received
    done: bool  # saw the end of stream ([DONE] / message_stop)
    error: str | None
    run_id: str | None = None  # the gateway's X-Run-Id, to look a bad stream up in the database
    first_byte_at: float | None = None  # gateway only: when the first SSE bytes (the role chunk) arrived
    text_at: list[float] = field(default_factory=list)  # when each text chunk arrived

    @property
    def ttft(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.started_at

    @property
    def total(self) -> float:
        return self.ended_at - self.started_at

    def is_exact(self, expected_text: str) -> bool:
        """The whole reply, nothing lost or repeated, then a clean end. The number of chunks is not checked:
        the gateway joins deltas that reach the worker together (in one network read) into one."""
        return self.error is None and self.done and self.text == expected_text

    def describe(self, expected_text: str) -> str:
        """One line on what went wrong with this stream."""
        return (
            f"run {self.run_id}: {self.deltas} chunks, {len(self.text)}/{len(expected_text)} characters, "
            f"text {'as expected' if self.text == expected_text else 'differs'}, "
            f"[DONE] {'seen' if self.done else 'missing'}, error: {self.error}"
        )


class GatewayClient:
    """POST /v1/chat/completions with stream=true on httpx2, parsing the SSE by hand.

    httpx2 is the HTTP client the official openai and anthropic SDKs run on; openai.AsyncOpenAI itself adds a
    pydantic model per chunk, and the less the client spends per chunk, the more of the measured time is the
    gateway's. (httpx 0.28, used here before, let requests wait seconds in its own connection pool before
    writing a byte once 32 or more streams ran at once: docs/performance.md, sixteenth step.)
    """

    def __init__(self, base_url: str, api_key: str, agent: str):
        self.url = f"{base_url}/v1/chat/completions"
        self.agent = agent
        self.headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
        # Limits far above the largest burst: the client's pool must never be what queues a request.
        self.http = httpx2.AsyncClient(
            timeout=REQUEST_TIMEOUT, limits=httpx2.Limits(max_connections=2000, max_keepalive_connections=2000)
        )

    async def close(self) -> None:
        await self.http.aclose()

    async def stream(self, prompt: str, user: str | None = None) -> StreamResult:
        # Without `user`, every request gets an ephemeral session; with it, the named session's next turn.
        request = {"model": self.agent, "messages": [{"role": "user", "content": prompt}], "stream": True}
        if user is not None:
            request["user"] = user
        body = json.dumps(request).encode()
        parts: list[str] = []
        text_at: list[float] = []
        first_token_at = first_byte_at = None
        done = False
        error = None
        run_id = None
        started_at = time.perf_counter()
        try:
            async with self.http.stream("POST", self.url, content=body, headers=self.headers) as response:
                run_id = response.headers.get("X-Run-Id")
                if response.status_code != 200:
                    error = f"HTTP {response.status_code}: {(await response.aread())[:300]!r}"
                else:
                    buffer = b""
                    async for data in response.aiter_raw():
                        first_byte_at = first_byte_at or time.perf_counter()
                        buffer += data
                        *events, buffer = buffer.split(b"\n\n")
                        for event in events:
                            if not event.startswith(b"data: "):
                                continue  # ": keep-alive" comments
                            payload = event[6:]
                            if payload == b"[DONE]":
                                done = True
                                continue
                            chunk = json.loads(payload)
                            if "error" in chunk:
                                error = json.dumps(chunk["error"])[:300]
                                continue
                            content = chunk["choices"][0]["delta"].get("content") if chunk["choices"] else None
                            if content:
                                text_at.append(time.perf_counter())
                                if first_token_at is None:
                                    first_token_at = text_at[-1]
                                parts.append(content)
        except (httpx2.HTTPError, ValueError, KeyError, IndexError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        ended_at = time.perf_counter()
        return StreamResult(
            started_at, first_token_at, ended_at, "".join(parts), len(parts), done, error, run_id, first_byte_at,
            text_at,
        )


class DirectClient:
    """The fake server called straight with the official SDK, iterating raw stream events."""

    def __init__(self, base_url: str):
        self.sdk = anthropic.AsyncAnthropic(base_url=base_url, api_key="bench-key", max_retries=0, timeout=60.0)

    async def close(self) -> None:
        await self.sdk.close()

    async def stream(self, prompt: str) -> StreamResult:
        parts: list[str] = []
        text_at: list[float] = []
        first_token_at = None
        done = False
        error = None
        started_at = time.perf_counter()
        try:
            stream = await self.sdk.messages.create(
                model=DIRECT_MODEL,
                max_tokens=DIRECT_MAX_TOKENS,
                messages=[{"role": "user", "content": prompt}],
                stream=True,
            )
            async with stream:
                async for event in stream:
                    if event.type == "content_block_delta" and event.delta.type == "text_delta" and event.delta.text:
                        text_at.append(time.perf_counter())
                        if first_token_at is None:
                            first_token_at = text_at[-1]
                        parts.append(event.delta.text)
                    elif event.type == "message_stop":
                        done = True
        except anthropic.APIError as exc:
            error = f"{type(exc).__name__}: {exc}"
        return StreamResult(started_at, first_token_at, time.perf_counter(), "".join(parts), len(parts), done, error,
                            text_at=text_at)


async def run_batch(stream_one, prompts: list[str], concurrency: int) -> list[StreamResult]:
    """Send every prompt with at most `concurrency` streams in flight (closed loop: each of `concurrency`
    lanes sends its next request as soon as its previous stream ended). Results are in prompt order."""
    results: list[StreamResult | None] = [None] * len(prompts)
    pending = iter(enumerate(prompts))

    async def lane():
        for index, prompt in pending:  # the lanes share one iterator, so each prompt is sent once
            results[index] = await stream_one(prompt)

    async with asyncio.timeout(BATCH_TIMEOUT_SECONDS):
        await asyncio.gather(*(lane() for _ in range(concurrency)))
    return results


async def metered_batch(meter: CpuMeter, stream_one, prompts: list[str], concurrency: int):
    """run_batch, plus where the CPU went meanwhile: milliseconds per stream by process, and how many
    cores the rest of the machine kept busy on average."""
    before, started = meter.snapshot(), time.perf_counter()
    results = await run_batch(stream_one, prompts, concurrency)
    used, wall = CpuMeter.used(before, meter.snapshot()), time.perf_counter() - started
    cpu = {
        "ms_per_stream": {name: round(seconds * 1000 / len(prompts), 2) for name, seconds in used.items()},
        "other_cores": round(used["other"] / wall, 2),
    }
    return results, cpu, wall


# --------------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def p50_p99_ms(values: list[float]) -> dict:
    out = {}
    for name, q in (("p50", 50), ("p99", 99)):
        value = percentile(values, q)
        out[name] = None if value is None else round(value * 1000, 2)
    return out


def peak_overlap(results: list[StreamResult]) -> int:
    """Most streams that were delivering tokens at the same moment (first token .. end of stream)."""
    moments = []
    for r in results:
        if r.first_token_at is not None:
            moments += [(r.first_token_at, 1), (r.ended_at, -1)]
    peak = current = 0
    for _, step in sorted(moments):  # at equal times -1 sorts first: an end and a start don't overlap
        current += step
        peak = max(peak, current)
    return peak


# --------------------------------------------------------------------------------------------------
# 1. Added latency
# --------------------------------------------------------------------------------------------------


def compare(direct: list[StreamResult], gateway: list[StreamResult], metric: str) -> dict:
    """p50/p99 of one metric for both paths; added and ratio are taken between the percentiles."""
    direct_pct = p50_p99_ms([getattr(r, metric) for r in direct if r.error is None and r.ttft is not None])
    gateway_pct = p50_p99_ms([getattr(r, metric) for r in gateway if r.error is None and r.ttft is not None])
    out = {"direct": direct_pct, "gateway": gateway_pct, "added": {}, "ratio": {}}
    for p in ("p50", "p99"):
        d, g = direct_pct[p], gateway_pct[p]
        out["added"][p] = None if d is None or g is None else round(g - d, 2)
        out["ratio"][p] = None if not d or g is None else round(g / d, 3)
    return out


async def measure_latency(gateway: GatewayClient, direct: DirectClient, meter: CpuMeter) -> list[dict]:
    rows = []
    for concurrency, requests in LATENCY_PLAN:
        results, cpu, first_failures = {}, {}, {}
        for path, client in (("direct", direct), ("gateway", gateway)):
            # Warm-up: connection pools, the worker's SDK client, Django's lazy imports, Postgres pools.
            await run_batch(client.stream, [LATENCY_PROMPT] * max(20, concurrency), concurrency)
            prompts = [LATENCY_PROMPT] * requests
            results[path], cpu[path], _ = await metered_batch(meter, client.stream, prompts, concurrency)
            bad = [r for r in results[path] if not r.is_exact(LATENCY_REPLY)]
            first_failures[path] = bad[0].describe(LATENCY_REPLY) if bad else None
        rows.append(
            {
                "concurrency": concurrency,
                "requests": requests,
                "failures": {
                    path: sum(not r.is_exact(LATENCY_REPLY) for r in batch)
                    for path, batch in results.items()
                },
                "first_failures": first_failures,
                "ttft_ms": compare(results["direct"], results["gateway"], "ttft"),
                "total_ms": compare(results["direct"], results["gateway"], "total"),
                "cpu": cpu,
            }
        )
    return rows


def traced_prompt(index: int) -> str:
    return f"{LATENCY_TEXT} (trace {index}) {LATENCY_DIRECTIVES}"


async def fake_receive_times(http: httpx2.AsyncClient, fake_url: str) -> dict[int, float]:
    """time.time() at which the fake server got each traced request, by trace number."""
    recorded = (await http.get(f"{fake_url}/_fake/requests", params={"limit": BREAKDOWN_REQUESTS})).json()
    times = {}
    for request in recorded:
        content = request["body"]["messages"][-1]["content"]
        text = content if isinstance(content, str) else "".join(block.get("text", "") for block in content)
        if match := re.search(r"\(trace (\d+)\)", text):
            times[int(match.group(1))] = request["at"]
    return times


async def measure_ttft_breakdown(gateway: GatewayClient, direct: DirectClient, fake_url: str) -> dict:
    """Split time to first token at concurrency 1 into segments, using the moment the fake server received
    each request (it records time.time(); the client's perf_counter() is converted to the same clock).

    The segments' medians need not add up to the median total."""
    clock_offset = time.time() - time.perf_counter()
    segments = {}
    for path, client in (("direct", direct), ("gateway", gateway)):
        await gateway.http.post(f"{fake_url}/_fake/reset")
        results = await run_batch(client.stream, [traced_prompt(i) for i in range(BREAKDOWN_REQUESTS)], 1)
        received = await fake_receive_times(gateway.http, fake_url)
        rows = [(r, received[i] - clock_offset) for i, r in enumerate(results) if i in received and r.ttft is not None]
        if path == "gateway":
            segments["gateway: sent -> first SSE byte (auth, run written and committed, step enqueued)"] = [
                r.first_byte_at - r.started_at for r, _ in rows if r.first_byte_at is not None
            ]
            segments["gateway: first SSE byte -> request reaches the fake (Celery delivery, step setup)"] = [
                at - r.first_byte_at for r, at in rows if r.first_byte_at is not None
            ]
        else:
            segments["direct: sent -> request reaches the fake"] = [at - r.started_at for r, at in rows]
        segments[f"{path}: request reaches the fake -> first token at the client (includes the fake's 20 ms)"] = [
            r.first_token_at - at for r, at in rows
        ]
    return {name: p50_p99_ms(values)["p50"] for name, values in segments.items()}


# --------------------------------------------------------------------------------------------------
# 2. Capacity
# --------------------------------------------------------------------------------------------------


def added_gaps_ms(results: list[StreamResult], delay_ms: int) -> dict:
    """What comes on top of the fake's own pace (a delta every delay_ms) between two text chunks of a stream,
    p50/p99 in ms: deltas that travel joined show as a longer gap. While a burst's runs start, their starts
    compete with the streams already running; `steady` counts only the gaps after every stream had its first
    token."""
    gaps = [(earlier, later - earlier - delay_ms / 1000)
            for r in results for earlier, later in itertools.pairwise(r.text_at)]
    all_started = max((r.first_token_at for r in results if r.first_token_at is not None), default=0.0)
    return {"all": p50_p99_ms([gap for _, gap in gaps]),
            "steady": p50_p99_ms([gap for at, gap in gaps if at >= all_started])}


def capacity_reply(level: int, index: int) -> str:
    """A reply unique to each stream, so a delta that went to the wrong stream shows as a mismatch."""
    head = f"level {level} stream {index:04d}: "
    filler = "the quick brown fox jumps over the lazy dog "
    return (head + filler * (CAPACITY_REPLY_CHARS // len(filler) + 1))[:CAPACITY_REPLY_CHARS]


def capacity_prompt(reply: str, delay_ms: int) -> str:
    return f"capacity [[reply={reply}]][[deltas={CAPACITY_DELTAS}]][[delay_ms={delay_ms}]]"


async def measure_capacity(gateway: GatewayClient, direct: DirectClient, meter: CpuMeter, levels: list[int],
                           delay_ms: int) -> dict:
    rows = []
    for level in levels:
        replies = [capacity_reply(level, i) for i in range(level)]
        prompts = [capacity_prompt(reply, delay_ms) for reply in replies]
        direct_results = await run_batch(direct.stream, prompts, level)
        results, cpu, wall = await metered_batch(meter, gateway.stream, prompts, level)
        bad = [(r, reply) for r, reply in zip(results, replies) if not r.is_exact(reply)]
        rows.append(
            {
                "level": level,
                "ok": level - len(bad),
                "total": level,
                # Characters, not chunks: deltas that reach the worker together travel as one chunk.
                "lost_chars": sum(max(0, len(reply) - len(r.text)) for r, reply in zip(results, replies)),
                "extra_chars": sum(max(0, len(r.text) - len(reply)) for r, reply in zip(results, replies)),
                "text_mismatches": sum(r.text != reply for r, reply in zip(results, replies)),
                "chunks_per_stream": round(sum(r.deltas for r in results) / level, 1),
                "missing_done": sum(not r.done for r in results),
                "errors": sum(r.error is not None for r in results),
                "bad_streams": [r.describe(reply) for r, reply in bad[:5]],
                "wall_s": round(wall, 2),
                "chars_per_s": round(sum(len(r.text) for r in results) / wall),
                "peak_overlap": peak_overlap(results),
                "ttft_ms": p50_p99_ms([r.ttft for r in results if r.ttft is not None]),
                "stream_ms": p50_p99_ms([r.total for r in results if r.error is None]),
                "gap_over_pace_ms": added_gaps_ms(results, delay_ms),
                # The same burst straight to the fake: the gaps the fake server and this client add themselves.
                "direct_gap_over_pace_ms": added_gaps_ms(direct_results, delay_ms),
                "cpu": cpu,
            }
        )
        await asyncio.sleep(1.0)  # let the worker finish its bookkeeping before the next burst
    # Only bursts that lost nothing, and none below them did either, count for the verdict.
    zero_loss = []
    for row in rows:
        if row["ok"] != row["total"]:
            break
        zero_loss.append(row)
    return {
        "stream_delay_ms": delay_ms,
        "levels": rows,
        "max_zero_loss_level": max((row["level"] for row in zero_loss), default=0),
        # A burst of N is only N concurrent streams if they overlapped: this is what the target is about.
        "max_zero_loss_overlap": max((row["peak_overlap"] for row in zero_loss), default=0),
    }


async def measure(services: Services, agent: str, api_key: str, args: argparse.Namespace) -> dict:
    # SIGTERM cancels the measurement like Ctrl-C does, so every request is cancelled cleanly and the
    # caller's finally stops the services.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, asyncio.current_task().cancel)
    watchdog = asyncio.create_task(watch_children(services.children))
    gateway = GatewayClient(services.gateway_url, api_key, agent)
    direct = DirectClient(services.fake_url)
    meter = CpuMeter(services)

    async def all_phases() -> dict:
        print("measuring added latency ...", flush=True)
        latency = await measure_latency(gateway, direct, meter)
        breakdown = await measure_ttft_breakdown(gateway, direct, services.fake_url)
        print("measuring concurrent streams ...", flush=True)
        capacity = await measure_capacity(gateway, direct, meter, args.levels, args.stream_delay_ms)
        return {"latency": latency, "ttft_breakdown_ms": breakdown, "capacity": capacity}

    work = asyncio.create_task(all_phases())
    try:
        await asyncio.wait({work, watchdog}, return_when=asyncio.FIRST_COMPLETED)
        if watchdog.done():
            watchdog.result()  # raises: a service died
        return work.result()
    finally:
        for task in (work, watchdog):
            task.cancel()
        await asyncio.gather(work, watchdog, return_exceptions=True)
        await gateway.close()
        await direct.close()
        meter.close()


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------

CPU_COLUMNS = ("client", "fake-llm", "daphne", "worker", "redis", "postgres", "other")
GATEWAY_PROCESSES = ("daphne", "worker", "redis", "postgres")
# Above this many cores kept busy by the rest of the machine, a batch's numbers are not trustworthy.
OTHER_LOAD_WARNING_CORES = 0.25


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    """Plain aligned text: first column left-aligned, the rest right-aligned."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]

    def line(cells):
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def ms(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def signed_ms(value) -> str:
    return "-" if value is None else f"{value:+.1f}"


def times(value) -> str:
    return "-" if value is None else f"{value:.2f}x"


def latency_table(rows: list[dict]) -> str:
    headers = ["conc", "requests", "metric", "pct", "direct ms", "gateway ms", "added ms", "ratio", "failed d/g"]
    lines = []
    for row in rows:
        for metric, label in (("ttft_ms", "TTFT"), ("total_ms", "total")):
            stats = row[metric]
            for p in ("p50", "p99"):
                lines.append(
                    [
                        str(row["concurrency"]), str(row["requests"]), label, p,
                        ms(stats["direct"][p]), ms(stats["gateway"][p]),
                        signed_ms(stats["added"][p]), times(stats["ratio"][p]),
                        f"{row['failures']['direct']}/{row['failures']['gateway']}",
                    ]
                )
    return format_table(headers, lines)


def capacity_table(capacity: dict) -> str:
    headers = [
        "streams", "ok/total", "lost", "extra", "errors", "chunks", "peak overlap", "wall s", "chars/s",
        "TTFT p50 ms", "TTFT p99 ms", "stream p50 ms", "stream p99 ms", "gap over pace p50/p99 ms", "once all started", "direct, all started",
    ]
    lines = [
        [
            str(r["level"]), f"{r['ok']}/{r['total']}", str(r["lost_chars"]), str(r["extra_chars"]), str(r["errors"]),
            f"{r['chunks_per_stream']:g}", str(r["peak_overlap"]), f"{r['wall_s']:.2f}", str(r["chars_per_s"]),
            ms(r["ttft_ms"]["p50"]), ms(r["ttft_ms"]["p99"]), ms(r["stream_ms"]["p50"]), ms(r["stream_ms"]["p99"]),
            *(f"{signed_ms(gaps['p50'])} / {signed_ms(gaps['p99'])}" for gaps in (
                r["gap_over_pace_ms"]["all"], r["gap_over_pace_ms"]["steady"], r["direct_gap_over_pace_ms"]["steady"])),
        ]
        for r in capacity["levels"]
    ]
    return format_table(headers, lines)


def measured_batches(results: dict) -> list[tuple[str, dict]]:
    """(label, cpu) of every measured batch, in the order they ran."""
    batches = [
        (f"{path} c={row['concurrency']}", row["cpu"][path])
        for row in results["latency"]
        for path in ("direct", "gateway")
    ]
    return batches + [(f"burst of {row['level']}", row["cpu"]) for row in results["capacity"]["levels"]]


def cpu_table(batches: list[tuple[str, dict]]) -> str:
    lines = []
    for label, cpu in batches:
        per_stream = cpu["ms_per_stream"]
        gateway_side = sum(per_stream.get(name, 0.0) for name in GATEWAY_PROCESSES)
        cells = [ms(per_stream.get(name)) for name in CPU_COLUMNS]
        lines.append([label, *cells, ms(gateway_side), f"{cpu['other_cores']:.2f}"])
    return format_table(["batch", *CPU_COLUMNS, "gateway side", "other cores"], lines)


def evaluate_targets(results: dict) -> list[dict]:
    added_ttft = next(row["ttft_ms"]["added"]["p50"] for row in results["latency"] if row["concurrency"] == 1)
    capacity = results["capacity"]
    return [
        {
            "target": f"added TTFT p50 at concurrency 1 <= {TARGET_ADDED_TTFT_P50_MS:g} ms",
            "actual": f"{signed_ms(added_ttft)} ms",
            "met": added_ttft is not None and added_ttft <= TARGET_ADDED_TTFT_P50_MS,
        },
        {
            "target": f">= {TARGET_ZERO_LOSS_STREAMS} concurrent streams with zero loss (one worker)",
            "actual": (
                f"{capacity['max_zero_loss_overlap']} at once "
                f"(largest zero-loss burst: {capacity['max_zero_loss_level']})"
            ),
            "met": capacity["max_zero_loss_overlap"] >= TARGET_ZERO_LOSS_STREAMS,
        },
    ]


def print_report(results: dict, targets: list[dict]) -> None:
    latency, capacity = results["latency"], results["capacity"]
    print()
    print("1. Added latency: gateway vs the fake Anthropic server called directly")
    print(
        f"   same prompt on both paths: {LATENCY_DELTAS} deltas, ttft_ms=20, delay_ms=2, stream=true; "
        "gateway client: httpx2 + hand-parsed SSE; direct client: anthropic.AsyncAnthropic"
    )
    print("   added = gateway - direct and ratio = gateway / direct, per percentile")
    print("   failed = streams without exactly the expected text and deltas, or not ending cleanly (direct/gateway)")
    print(latency_table(latency))
    for row in latency:
        for path, failure in row["first_failures"].items():
            if failure:
                print(f"   first bad {path} stream at concurrency {row['concurrency']}: {failure}")
    print()
    delay = capacity["stream_delay_ms"]
    print(
        f"2. Concurrent streams the workers sustain: bursts of N streams sent at once, "
        f"each {CAPACITY_DELTAS} deltas {delay} ms apart (~{CAPACITY_DELTAS * delay / 1000:g} s)"
    )
    print("   ok = exactly the expected text, then [DONE], no error")
    print("   lost/extra = characters missing/repeated; chunks = text chunks per stream (deltas that reached the")
    print(f"   worker in one read travel as one, so fewer than {CAPACITY_DELTAS} under load); peak overlap = most streams")
    print("   delivering tokens at the same moment; chars/s = characters delivered / wall time")
    print(capacity_table(capacity))
    for row in capacity["levels"]:
        for failure in row["bad_streams"]:
            print(f"   bad stream in the burst of {row['level']}: {failure}")
    print(
        f"   largest burst with zero loss (and none below it): {capacity['max_zero_loss_level']}; "
        f"most streams at once in such a burst: {capacity['max_zero_loss_overlap']}"
    )
    print()
    batches = measured_batches(results)
    print("3. CPU per stream in ms, by process, from /proc (gateway side = daphne + worker + redis + postgres)")
    print("   other = the rest of the machine (Postgres background writers, py-spy, other users' work);")
    print("   other cores = its average load during the batch")
    print(cpu_table(batches))
    busiest = max(batches, key=lambda batch: batch[1]["other_cores"])
    if busiest[1]["other_cores"] > OTHER_LOAD_WARNING_CORES:
        print(
            f"   WARNING: other processes kept {busiest[1]['other_cores']:.2f} cores busy during '{busiest[0]}': "
            "this machine has 2, so these numbers are skewed; rerun on a quiet machine"
        )
    print()
    print(f"4. Time to first token at concurrency 1, by segment (p50 of {BREAKDOWN_REQUESTS} traced requests per path)")
    print("   the fake server records when each request reaches it; medians of segments need not add up")
    segments = results["ttft_breakdown_ms"].items()
    print(format_table(["segment", "p50 ms"], [[name, ms(value)] for name, value in segments]))
    print()
    print("Targets")
    rows = [[t["target"], t["actual"], "MET" if t["met"] else "NOT MET"] for t in targets]
    print(format_table(["target", "actual", "verdict"], rows))


def write_results(results: dict, targets: list[dict], worker_concurrency: int, log_dir: Path) -> None:
    RESULTS_PATH.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "config": {
            "worker_concurrency": worker_concurrency,
            "latency_prompt": LATENCY_PROMPT,
            "latency_plan": [{"concurrency": c, "requests": n} for c, n in LATENCY_PLAN],
            "capacity_deltas": CAPACITY_DELTAS,
            "gateway_client": "httpx2.AsyncClient, SSE parsed by hand",
            "direct_client": "anthropic.AsyncAnthropic, raw messages.create(stream=True)",
        },
        **results,
        "targets": targets,
        "log_dir": str(log_dir),
    }
    RESULTS_PATH.write_text(json.dumps(document, indent=2) + "\n")


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--profile", action="store_true",
        help="record py-spy profiles of Daphne and the worker (collapsed stacks, next to the logs)",
    )
    parser.add_argument(
        "--levels", type=lambda text: [int(n) for n in text.split(",")], default=list(CAPACITY_LEVELS),
        help=f"burst sizes of the capacity test, comma-separated (default: {','.join(map(str, CAPACITY_LEVELS))})",
    )
    parser.add_argument(
        "--stream-delay-ms", type=int, default=CAPACITY_DELAY_MS,
        help=f"ms between the {CAPACITY_DELTAS} deltas of a capacity stream (default: %(default)s, ~1 s streams); "
        "longer streams let a large burst overlap fully even where starting runs is slow "
        f"(every batch must end within {BATCH_TIMEOUT_SECONDS:g} s)",
    )
    return parser.parse_args()


def exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)  # unwinds through the finally that stops the children


def run(main) -> None:
    """Exit with main()'s status; on SIGTERM or Ctrl-C too, once main's finally has stopped the children."""
    signal.signal(signal.SIGTERM, exit_on_sigterm)  # outside the measurement; see measure() for inside
    try:
        sys.exit(main())
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("\ninterrupted; every process the benchmark started was stopped", file=sys.stderr)
        sys.exit(130)


def main() -> int:
    args = parse_args()
    worker_concurrency = max(WORKER_CONCURRENCY, *args.levels)

    began = time.monotonic()
    log_dir = Path(tempfile.mkdtemp(prefix="beamclaw-bench-"))
    print(f"logs: {log_dir}", flush=True)
    env = base_env()
    print(f"preparing {DATABASE_URL} and {REDIS_URL} ...", flush=True)
    agent, api_key = prepare_state(env)

    children: list[Process] = []
    profiler = None
    try:
        print("starting the fake Anthropic server, a worker and Daphne ...", flush=True)
        services = start_services(env, log_dir, children, worker_concurrency)
        if args.profile:
            profiler = Profiler(services, log_dir)
        results = asyncio.run(measure(services, agent, api_key, args))
    finally:
        if profiler is not None:
            for path in profiler.stop():
                print(f"profile: {path}")
        stop_all(children)

    targets = evaluate_targets(results)
    print_report(results, targets)
    write_results(results, targets, worker_concurrency, log_dir)
    print(f"\nresults: {RESULTS_PATH.relative_to(ROOT)}   logs: {log_dir}   took {time.monotonic() - began:.0f} s")
    return 0


if __name__ == "__main__":
    run(main)
