#!/usr/bin/env python
"""BeamClaw gateway benchmark against the fake Anthropic server (see bench/README.md).

One command, self-contained: it creates and migrates its own database (beamclaw_bench), flushes its own
Redis db (14), starts the fake Anthropic server, one worker and Daphne, measures, prints a table, writes
bench/results/latest.json and stops every process it started, also on Ctrl-C or an error.

1. Added latency: the same streaming request through the gateway (POST /v1/chat/completions, parsed
   with httpx) and straight to the fake server (anthropic.AsyncAnthropic); p50/p99 of time to first
   token and of total stream time, at concurrency 1 and 50.
2. Capacity: bursts of N simultaneous ~1 s streams; every stream must carry exactly the expected text
   in exactly the expected number of deltas, end with [DONE] and carry no error.

The load generator is this process: one asyncio loop, so the client side uses at most one core of a
machine it shares with Daphne, the worker, the fake server, Redis and Postgres.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import anthropic
import httpx
import psycopg
import redis

ROOT = Path(__file__).resolve().parent.parent
RESULTS_PATH = ROOT / "bench" / "results" / "latest.json"

DATABASE_URL = "postgres:///beamclaw_bench"
REDIS_URL = "redis://127.0.0.1:6379/14"
TENANT_SLUG = "bench"
AGENT_SLUG = "bench"
# Threads in the one worker: at least the largest burst, so every stream of a burst runs at once.
WORKER_CONCURRENCY = 320

# The direct path sends what the worker sends for an agent with default settings.
DIRECT_MODEL = "claude-sonnet-4-5"
DIRECT_MAX_TOKENS = 8192

# 1. Added latency.
LATENCY_TEXT = "Hello from the BeamClaw benchmark, please echo this sentence back."
LATENCY_PROMPT = f"{LATENCY_TEXT} [[deltas=20]][[ttft_ms=20]][[delay_ms=2]]"
LATENCY_REPLY = f"Echo: {LATENCY_TEXT}"
LATENCY_DELTAS = 20
LATENCY_PLAN = ((1, 200), (50, 500))  # (concurrency, measured requests per path)

# 2. Capacity.
CAPACITY_LEVELS = (50, 100, 200, 300)
CAPACITY_DELTAS = 50
CAPACITY_DELAY_MS = 20  # 50 deltas x 20 ms: each stream lasts ~1 s, so a burst's streams all overlap
CAPACITY_REPLY_CHARS = 200

TARGET_ADDED_TTFT_P50_MS = 15.0
TARGET_ZERO_LOSS_STREAMS = 200

REQUEST_TIMEOUT = httpx.Timeout(60.0, connect=10.0)
BATCH_TIMEOUT_SECONDS = 120.0  # no batch of this benchmark should come close; it bounds a hang
STARTUP_TIMEOUT_SECONDS = 60.0


# --------------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------------


class Child:
    """A child process with its output in a log file.

    It gets its own session, so a Ctrl-C on the terminal reaches only this script, which then stops the
    children itself, in order.
    """

    def __init__(self, name: str, argv: list[str], env: dict, log_dir: Path):
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Child:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def ensure_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with code {self.proc.returncode}; see {self.log_path}")

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def wait_until(predicate, *, what: str, children: list[Child], timeout: float = STARTUP_TIMEOUT_SECONDS):
    """Poll predicate() until it returns something truthy; fail early if a child died meanwhile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in children:
            child.ensure_alive()
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    )
    return env


def manage(env: dict, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    if result.returncode != 0:
        raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return result.stdout


def prepare_state(env: dict) -> tuple[str, str]:
    """Create and migrate the bench database, flush the bench Redis db, and return (agent, api key).

    The tenant is created before the worker starts, so the worker consumes its queue from the start.
    """
    manage(env, "ensure_database")
    manage(env, "migrate", "--noinput", "-v", "0")
    redis.Redis.from_url(REDIS_URL).flushdb()
    created = json.loads(manage(env, "create_tenant", TENANT_SLUG, "--agent", AGENT_SLUG, "--exists-ok"))
    return created["agent"], created["api_key"]


@dataclass
class Services:
    fake_url: str
    gateway_url: str
    children: list[Child]


def start_fake_server(env: dict, log_dir: Path) -> tuple[Child, str]:
    fake = Child("fake-llm", [sys.executable, "-m", "tests.fakes.anthropic_server", "--port", "0"], env, log_dir).start()

    def listening_port():
        match = re.search(r"LISTENING (\d+)", fake.log_path.read_text(errors="replace"))
        return match and match.group(1)

    port = wait_until(listening_port, what="the fake Anthropic server", children=[fake])
    return fake, f"http://127.0.0.1:{port}"


def start_services(env: dict, log_dir: Path, started: list[Child]) -> Services:
    """Start the fake server, one worker and Daphne; each is appended to `started` as soon as it runs,
    so the caller can stop whatever did start if a later one fails."""
    fake, fake_url = start_fake_server(env, log_dir)
    started.append(fake)
    service_env = dict(env, ANTHROPIC_BASE_URL=fake_url, ANTHROPIC_API_KEY="bench-key")
    worker_argv = [
        sys.executable, "manage.py", "worker", "-c", str(WORKER_CONCURRENCY), "-n", "bench@%h", "-l", "WARNING",
    ]
    started.append(Child("worker", worker_argv, service_env, log_dir).start())
    port = free_port()
    daphne_argv = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "beamclaw_project.asgi:application"]
    started.append(Child("daphne", daphne_argv, service_env, log_dir).start())
    gateway_url = f"http://127.0.0.1:{port}"

    def worker_ready() -> bool:
        try:
            response = httpx.get(f"{gateway_url}/health", timeout=2)
        except httpx.HTTPError:
            return False
        return response.status_code == 200 and response.json()["checks"]["workers"].get("count", 0) >= 1

    wait_until(worker_ready, what="Daphne with a worker behind it (GET /health)", children=started)
    return Services(fake_url=fake_url, gateway_url=gateway_url, children=started)


def stop_all(children: list[Child]) -> None:
    # Entry points first, the fake server last, so nothing in flight sees a dead upstream.
    for child in reversed(children):
        child.stop()


class Profiler:
    """py-spy sampling Daphne and the worker for the whole measurement (--profile). It costs CPU on the
    same two cores, so numbers of a profiled run are a bit worse than those of a plain one."""

    def __init__(self, services: Services, log_dir: Path):
        py_spy = shutil.which("py-spy", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
        if py_spy is None:
            raise RuntimeError("--profile needs py-spy: pip install py-spy")
        self.outputs = []
        self.processes = []
        for child in services.children:
            if child.name not in ("daphne", "worker"):
                continue
            output = log_dir / f"{child.name}.collapsed.txt"
            argv = [py_spy, "record", "--nonblocking", "--format", "raw", "--rate", "100", "-o", str(output), "--pid", str(child.pid)]
            log = open(log_dir / f"py-spy-{child.name}.log", "ab")
            self.processes.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
            log.close()
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

    @property
    def ttft(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.started_at

    @property
    def total(self) -> float:
        return self.ended_at - self.started_at

    def is_exact(self, expected_text: str, expected_deltas: int) -> bool:
        return self.error is None and self.done and self.deltas == expected_deltas and self.text == expected_text


class GatewayClient:
    """POST /v1/chat/completions with stream=true on httpx, parsing the SSE by hand.

    Chosen over openai.AsyncOpenAI, which runs the same httpx underneath plus a pydantic model per chunk:
    the less the client spends per chunk, the more of the measured time is the gateway's.
    """

    def __init__(self, base_url: str, api_key: str, agent: str):
        self.url = f"{base_url}/v1/chat/completions"
        self.agent = agent
        self.headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
        # Limits far above the largest burst: the client's pool must never be what queues a request.
        self.http = httpx.AsyncClient(
            timeout=REQUEST_TIMEOUT, limits=httpx.Limits(max_connections=2000, max_keepalive_connections=2000)
        )

    async def close(self) -> None:
        await self.http.aclose()

    async def stream(self, prompt: str) -> StreamResult:
        # No `user`: every request gets an ephemeral session.
        body = json.dumps({"model": self.agent, "messages": [{"role": "user", "content": prompt}], "stream": True}).encode()
        parts: list[str] = []
        first_token_at = None
        done = False
        error = None
        started_at = time.perf_counter()
        try:
            async with self.http.stream("POST", self.url, content=body, headers=self.headers) as response:
                if response.status_code != 200:
                    error = f"HTTP {response.status_code}: {(await response.aread())[:300]!r}"
                else:
                    buffer = b""
                    async for data in response.aiter_raw():
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
                                if first_token_at is None:
                                    first_token_at = time.perf_counter()
                                parts.append(content)
        except (httpx.HTTPError, ValueError, KeyError, IndexError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        return StreamResult(started_at, first_token_at, time.perf_counter(), "".join(parts), len(parts), done, error)


class DirectClient:
    """The fake server called straight with the official SDK, iterating raw stream events."""

    def __init__(self, base_url: str):
        self.sdk = anthropic.AsyncAnthropic(base_url=base_url, api_key="bench-key", max_retries=0, timeout=60.0)

    async def close(self) -> None:
        await self.sdk.close()

    async def stream(self, prompt: str) -> StreamResult:
        parts: list[str] = []
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
                        if first_token_at is None:
                            first_token_at = time.perf_counter()
                        parts.append(event.delta.text)
                    elif event.type == "message_stop":
                        done = True
        except anthropic.APIError as exc:
            error = f"{type(exc).__name__}: {exc}"
        return StreamResult(started_at, first_token_at, time.perf_counter(), "".join(parts), len(parts), done, error)


async def run_batch(stream_one, prompts: list[str], concurrency: int) -> list[StreamResult]:
    """Send every prompt with at most `concurrency` streams in flight (closed loop: each of `concurrency`
    lanes sends its next request as soon as its previous stream ended). Results are in prompt order."""
    results: list[StreamResult | None] = [None] * len(prompts)
    pending = iter(enumerate(prompts))

    async def lane():
        for index, prompt in pending:  # the lanes share one iterator, so each prompt is sent once
            results[index] = await stream_one(prompt)

    await asyncio.wait_for(asyncio.gather(*(lane() for _ in range(concurrency))), BATCH_TIMEOUT_SECONDS)
    return results


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
    return {name: None if (v := percentile(values, q)) is None else round(v * 1000, 2) for name, q in (("p50", 50), ("p99", 99))}


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


async def measure_latency(gateway: GatewayClient, direct: DirectClient) -> list[dict]:
    rows = []
    for concurrency, requests in LATENCY_PLAN:
        per_path = {}
        for name, client in (("direct", direct), ("gateway", gateway)):
            # Warm-up: connection pools, the worker's SDK client, Django's lazy imports, Postgres pools.
            await run_batch(client.stream, [LATENCY_PROMPT] * max(20, concurrency), concurrency)
            per_path[name] = await run_batch(client.stream, [LATENCY_PROMPT] * requests, concurrency)
        failures = {
            name: sum(not r.is_exact(LATENCY_REPLY, LATENCY_DELTAS) for r in results) for name, results in per_path.items()
        }
        first_errors = {name: next((r.error for r in results if r.error), None) for name, results in per_path.items()}
        rows.append(
            {
                "concurrency": concurrency,
                "requests": requests,
                "failures": failures,
                "first_errors": first_errors,
                "ttft_ms": compare(per_path["direct"], per_path["gateway"], "ttft"),
                "total_ms": compare(per_path["direct"], per_path["gateway"], "total"),
            }
        )
    return rows


# --------------------------------------------------------------------------------------------------
# 2. Capacity
# --------------------------------------------------------------------------------------------------


def capacity_reply(level: int, index: int) -> str:
    """A reply unique to each stream, so a delta that went to the wrong stream shows as a mismatch."""
    head = f"level {level} stream {index:04d}: "
    filler = "the quick brown fox jumps over the lazy dog "
    return (head + filler * (CAPACITY_REPLY_CHARS // len(filler) + 1))[:CAPACITY_REPLY_CHARS]


def capacity_prompt(reply: str) -> str:
    return f"capacity [[reply={reply}]][[deltas={CAPACITY_DELTAS}]][[delay_ms={CAPACITY_DELAY_MS}]]"


async def measure_capacity(gateway: GatewayClient) -> dict:
    levels = []
    for level in CAPACITY_LEVELS:
        replies = [capacity_reply(level, i) for i in range(level)]
        started = time.perf_counter()
        results = await run_batch(gateway.stream, [capacity_prompt(r) for r in replies], level)
        wall = time.perf_counter() - started
        exact = [r.is_exact(reply, CAPACITY_DELTAS) for r, reply in zip(results, replies)]
        levels.append(
            {
                "level": level,
                "ok": sum(exact),
                "total": level,
                "lost_deltas": sum(max(0, CAPACITY_DELTAS - r.deltas) for r in results),
                "extra_deltas": sum(max(0, r.deltas - CAPACITY_DELTAS) for r in results),
                "text_mismatches": sum(r.text != reply for r, reply in zip(results, replies)),
                "missing_done": sum(not r.done for r in results),
                "errors": sum(r.error is not None for r in results),
                "first_error": next((r.error for r in results if r.error), None),
                "wall_s": round(wall, 2),
                "peak_overlap": peak_overlap(results),
                "ttft_ms": p50_p99_ms([r.ttft for r in results if r.ttft is not None]),
                "stream_ms": p50_p99_ms([r.total for r in results if r.error is None]),
            }
        )
        await asyncio.sleep(1.0)  # let the worker finish its bookkeeping before the next burst
    max_zero_loss = 0
    for row in levels:  # the highest level such that it and every level below it lost nothing
        if row["ok"] != row["total"]:
            break
        max_zero_loss = row["level"]
    return {"levels": levels, "max_zero_loss_level": max_zero_loss}


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------


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
                        ms(stats["direct"][p]), ms(stats["gateway"][p]), signed_ms(stats["added"][p]), times(stats["ratio"][p]),
                        f"{row['failures']['direct']}/{row['failures']['gateway']}",
                    ]
                )
    return format_table(headers, lines)


def capacity_table(capacity: dict) -> str:
    headers = [
        "streams", "ok/total", "lost", "extra", "errors", "wall s", "peak overlap",
        "TTFT p50 ms", "TTFT p99 ms", "stream p50 ms", "stream p99 ms",
    ]
    lines = [
        [
            str(r["level"]), f"{r['ok']}/{r['total']}", str(r["lost_deltas"]), str(r["extra_deltas"]), str(r["errors"]),
            f"{r['wall_s']:.2f}", str(r["peak_overlap"]), ms(r["ttft_ms"]["p50"]), ms(r["ttft_ms"]["p99"]),
            ms(r["stream_ms"]["p50"]), ms(r["stream_ms"]["p99"]),
        ]
        for r in capacity["levels"]
    ]
    return format_table(headers, lines)


def evaluate_targets(latency: list[dict], capacity: dict) -> list[dict]:
    added_ttft = next(row["ttft_ms"]["added"]["p50"] for row in latency if row["concurrency"] == 1)
    return [
        {
            "target": f"added TTFT p50 at concurrency 1 <= {TARGET_ADDED_TTFT_P50_MS:g} ms",
            "actual": f"{signed_ms(added_ttft)} ms",
            "met": added_ttft is not None and added_ttft <= TARGET_ADDED_TTFT_P50_MS,
        },
        {
            "target": f">= {TARGET_ZERO_LOSS_STREAMS} concurrent streams with zero loss (one worker)",
            "actual": f"{capacity['max_zero_loss_level']} streams",
            "met": capacity["max_zero_loss_level"] >= TARGET_ZERO_LOSS_STREAMS,
        },
    ]


def print_report(latency: list[dict], capacity: dict, targets: list[dict]) -> None:
    print()
    print("1. Added latency: gateway vs the fake Anthropic server called directly")
    print(
        f"   same prompt on both paths: {LATENCY_DELTAS} deltas, ttft_ms=20, delay_ms=2, stream=true; "
        "gateway client: httpx + hand-parsed SSE; direct client: anthropic.AsyncAnthropic"
    )
    print("   added = gateway - direct and ratio = gateway / direct, both per percentile; failed = wrong/incomplete streams")
    print(latency_table(latency))
    for row in latency:
        for path, error in row["first_errors"].items():
            if error:
                print(f"   first {path} error at concurrency {row['concurrency']}: {error}")
    print()
    print("2. Concurrent streams one worker sustains (each stream: 50 deltas, 20 ms apart, ~1 s)")
    print("   ok = exact text in exactly 50 deltas, then [DONE], no error; lost/extra = deltas missing/duplicated over all streams")
    print("   peak overlap = most streams delivering tokens at the same moment")
    print(capacity_table(capacity))
    for row in capacity["levels"]:
        if row["first_error"]:
            print(f"   first error at {row['level']} streams: {row['first_error']}")
    print(f"   highest level with zero loss: {capacity['max_zero_loss_level']}")
    print()
    print("Targets")
    print(format_table(["target", "actual", "verdict"], [[t["target"], t["actual"], "MET" if t["met"] else "NOT MET"] for t in targets]))


def write_results(latency: list[dict], capacity: dict, targets: list[dict], log_dir: Path) -> None:
    RESULTS_PATH.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "config": {
            "worker_concurrency": WORKER_CONCURRENCY,
            "latency_prompt": LATENCY_PROMPT,
            "latency_plan": [{"concurrency": c, "requests": n} for c, n in LATENCY_PLAN],
            "capacity_levels": list(CAPACITY_LEVELS),
            "capacity_deltas": CAPACITY_DELTAS,
            "capacity_delay_ms": CAPACITY_DELAY_MS,
            "gateway_client": "httpx.AsyncClient, SSE parsed by hand",
            "direct_client": "anthropic.AsyncAnthropic, raw messages.create(stream=True)",
        },
        "latency": latency,
        "capacity": capacity,
        "targets": targets,
        "log_dir": str(log_dir),
    }
    RESULTS_PATH.write_text(json.dumps(document, indent=2) + "\n")


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------


async def measure(services: Services, agent: str, api_key: str) -> tuple[list[dict], dict]:
    gateway = GatewayClient(services.gateway_url, api_key, agent)
    direct = DirectClient(services.fake_url)
    try:
        print("measuring added latency ...", flush=True)
        latency = await measure_latency(gateway, direct)
        print("measuring concurrent streams ...", flush=True)
        capacity = await measure_capacity(gateway)
    finally:
        await gateway.close()
        await direct.close()
    return latency, capacity


def raise_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that stop the children


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", action="store_true", help="record py-spy profiles of Daphne and the worker")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, raise_on_sigterm)

    log_dir = Path(tempfile.mkdtemp(prefix="beamclaw-bench-"))
    print(f"logs: {log_dir}", flush=True)
    env = base_env()
    began = time.monotonic()
    print(f"preparing {DATABASE_URL} and {REDIS_URL} ...", flush=True)
    agent, api_key = prepare_state(env)

    children: list[Child] = []
    profiler = None
    try:
        print("starting the fake Anthropic server, a worker and Daphne ...", flush=True)
        services = start_services(env, log_dir, children)
        if args.profile:
            profiler = Profiler(services, log_dir)
        latency, capacity = asyncio.run(measure(services, agent, api_key))
    finally:
        if profiler is not None:
            for path in profiler.stop():
                print(f"profile: {path}")
        stop_all(children)

    targets = evaluate_targets(latency, capacity)
    print_report(latency, capacity, targets)
    write_results(latency, capacity, targets, log_dir)
    print(f"\nresults: {RESULTS_PATH.relative_to(ROOT)}   logs: {log_dir}   took {time.monotonic() - began:.0f} s")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted; all benchmark processes were stopped", file=sys.stderr)
        sys.exit(130)
