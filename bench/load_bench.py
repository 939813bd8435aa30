#!/usr/bin/env python
"""Throughput and fixed costs of the gateway against the fake Anthropic server (see bench/README.md).

Uses gateway_bench.py's stack (its database, Redis db 14, the workers of `make run`, one Daphne) and measures, each next to
the same work sent straight to the fake server:

1. Added time to first token and CPU per simple run: 200 sequential streaming chat completions (c=1), and
   the same 200 straight to the fake server with the anthropic SDK; p50 TTFT of both, and CPU milliseconds
   per run of Daphne, the worker, Redis and the Postgres backends, from /proc.
2. Runs per second: 600 plain (non-streaming) chat completions from 32 concurrent clients, closed loop.
3. Connection opens: 300 clients connect to Daphne at the same moment and each sends GET /v1/models without a
   key (answered 401 without touching the database); a client not answered within 3 s counts as lost (the
   kernel retries a dropped SYN after 1 s and then 3 s, so an overflowing accept queue shows as losses).

Writes bench/results/load.json (or --json PATH). `--code DIR` measures the gateway of another checkout (an
older commit's `git worktree`, say) with this script: bench/compare.py uses it.
Usage: .venv/bin/python bench/load_bench.py [--profile] [--code DIR] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import anthropic
import httpx2

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gateway_bench as gb  # noqa: E402

RESULTS_PATH = gb.ROOT / "bench" / "results" / "load.json"
CPU_RUNS = 200
NAMED_RUNS, SESSION_TURNS = 100, 4
THROUGHPUT_RUNS = 600
THROUGHPUT_CLIENTS = 32
STREAMING_RUNS = 600
BURST_CONNECTIONS = 300
BURST_TIMEOUT_SECONDS = 3.0
# 20 deltas 2 ms apart, as the latency prompt: the reply streams as a model's would, only faster.
PROMPT = "Hello from the BeamClaw load benchmark. [[deltas=20]][[delay_ms=2]]"
REPLY = "Echo: Hello from the BeamClaw load benchmark."
# --paced: as a model writes, a delta every 10 ms (one per character of REPLY), which the worker reads one
# network read at a time.
PACED_DIRECTIVES = f"[[deltas={len(REPLY)}]][[delay_ms=10]]"


async def closed_loop(call, total: int, clients: int) -> tuple[list, float]:
    """`total` calls from `clients` lanes, each sending its next as soon as its previous one answered."""
    results: list = []
    remaining = iter(range(total))

    async def lane():
        for _ in remaining:
            results.append(await call())

    started = time.perf_counter()
    async with asyncio.timeout(gb.BATCH_TIMEOUT_SECONDS * 2):
        await asyncio.gather(*(lane() for _ in range(clients)))
    return results, time.perf_counter() - started


class Paths:
    """One plain (non-streaming) request on each path; True when the reply came back whole."""

    def __init__(self, services: gb.Services, api_key: str, agent: str):
        self.http = httpx2.AsyncClient(timeout=gb.REQUEST_TIMEOUT, limits=httpx2.Limits(max_connections=200))
        self.sdk = anthropic.AsyncAnthropic(base_url=services.fake_url, api_key="bench-key", max_retries=0)
        self.url = f"{services.gateway_url}/v1/chat/completions"
        self.headers = {"Authorization": f"Bearer {api_key}"}
        self.body = {"model": agent, "messages": [{"role": "user", "content": PROMPT}]}

    async def gateway(self) -> bool:
        response = await self.http.post(self.url, json=self.body, headers=self.headers)
        return response.status_code == 200 and response.json()["choices"][0]["message"]["content"] == REPLY

    async def direct(self) -> bool:
        message = await self.sdk.messages.create(
            model=gb.DIRECT_MODEL, max_tokens=gb.DIRECT_MAX_TOKENS, messages=[{"role": "user", "content": PROMPT}]
        )
        return message.content[0].text == REPLY

    async def close(self) -> None:
        await self.http.aclose()
        await self.sdk.close()


async def measure_cpu_per_run(gateway: gb.GatewayClient, direct: gb.DirectClient, meter: gb.CpuMeter) -> dict:
    prompt = gb.LATENCY_PROMPT  # 20 deltas, the first after 20 ms, then 2 ms apart
    await gb.run_batch(direct.stream, [prompt] * 20, 1)  # warm-up
    direct_results = await gb.run_batch(direct.stream, [prompt] * CPU_RUNS, 1)
    await gb.run_batch(gateway.stream, [prompt] * 20, 1)
    before = meter.snapshot()
    results = await gb.run_batch(gateway.stream, [prompt] * CPU_RUNS, 1)
    used = gb.CpuMeter.used(before, meter.snapshot())
    per_run = {name: round(seconds * 1000 / CPU_RUNS, 2) for name, seconds in used.items()}
    per_run["web + worker"] = round(per_run["daphne"] + per_run["worker"], 2)
    ttft = gb.compare(direct_results, results, "ttft")
    # The same in named sessions (`user`), a conversation of SESSION_TURNS turns each: the REST API's, a
    # WebSocket's and Discord's runs take the same way (a session that exists).
    named = []
    for i in range(NAMED_RUNS):
        if i % SESSION_TURNS == 0:
            user = f"bench-{uuid.uuid4().hex[:8]}"
        named.append(await gateway.stream(prompt, user=user))
    named_ttft = gb.compare(direct_results, named, "ttft")
    return {
        "runs": CPU_RUNS,
        "failed": sum(not r.is_exact(gb.LATENCY_REPLY) for r in results),
        "ms_per_run": per_run,
        "ttft_ms": {"direct_p50": ttft["direct"]["p50"], "gateway_p50": ttft["gateway"]["p50"], "added_p50": ttft["added"]["p50"],
                    "named_session_added_p50": named_ttft["added"]["p50"]},
    }


async def measure_throughput(paths: Paths, meter: gb.CpuMeter) -> dict:
    out = {}
    for name, call in (("direct", paths.direct), ("gateway", paths.gateway)):
        await closed_loop(call, THROUGHPUT_CLIENTS * 2, THROUGHPUT_CLIENTS)  # warm-up
        before = meter.snapshot()
        results, wall = await closed_loop(call, THROUGHPUT_RUNS, THROUGHPUT_CLIENTS)
        used = gb.CpuMeter.used(before, meter.snapshot())
        out[name] = {
            "runs_per_second": round(THROUGHPUT_RUNS / wall, 1),
            "failed": results.count(False),
            "other_cores": round(used["other"] / wall, 2),
            # Cores each process kept busy: one at ~1.0 is bound by its own interpreter lock.
            "cores": {process: round(seconds / wall, 2) for process, seconds in used.items()},
            "ms_per_run": {process: round(seconds * 1000 / THROUGHPUT_RUNS, 2) for process, seconds in used.items()},
        }
    return out


async def measure_streaming_under_load(gateway: gb.GatewayClient) -> dict:
    """TTFT when 32 clients stream at once (closed loop): what a user waits for the first token while the
    gateway is busy; the c=1 figure cannot show runs waiting for each other (for a tenant's lock, say)."""
    await gb.run_batch(gateway.stream, [gb.LATENCY_PROMPT] * THROUGHPUT_CLIENTS * 2, THROUGHPUT_CLIENTS)  # warm-up
    started = time.perf_counter()
    results = await gb.run_batch(gateway.stream, [gb.LATENCY_PROMPT] * STREAMING_RUNS, THROUGHPUT_CLIENTS)
    wall = time.perf_counter() - started
    ttfts = sorted(r.ttft * 1000 for r in results if r.ttft is not None)
    return {
        "runs": STREAMING_RUNS,
        "clients": THROUGHPUT_CLIENTS,
        "failed": sum(not r.is_exact(gb.LATENCY_REPLY) for r in results),
        "runs_per_second": round(STREAMING_RUNS / wall, 1),
        "ttft_ms": {"p50": round(gb.percentile(ttfts, 50), 1), "p99": round(gb.percentile(ttfts, 99), 1)},
    }


async def _open_and_ask(host: str, port: int, go: asyncio.Event) -> bool:
    await go.wait()
    try:
        async with asyncio.timeout(BURST_TIMEOUT_SECONDS):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(f"GET /v1/models HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
            status = await reader.readline()
        writer.close()
        return status.startswith(b"HTTP/1.1 ")
    except (OSError, TimeoutError):
        return False


async def measure_connection_burst(services) -> dict:
    url = urlsplit(services.gateway_url)
    go = asyncio.Event()
    clients = [asyncio.create_task(_open_and_ask(url.hostname, url.port, go)) for _ in range(BURST_CONNECTIONS)]
    await asyncio.sleep(0.1)
    go.set()
    answered = await asyncio.gather(*clients)
    return {"connections": BURST_CONNECTIONS, "lost": answered.count(False)}


async def measure(services: gb.Services, agent: str, api_key: str) -> dict:
    paths = Paths(services, api_key, agent)
    gateway = gb.GatewayClient(services.gateway_url, api_key, agent)
    direct = gb.DirectClient(services.fake_url)
    meter = gb.CpuMeter(services)
    try:
        print("measuring TTFT and CPU per run at c=1 ...", flush=True)
        cpu = await measure_cpu_per_run(gateway, direct, meter)
        print("measuring runs per second ...", flush=True)
        throughput = await measure_throughput(paths, meter)
        print("measuring TTFT with 32 clients streaming ...", flush=True)
        streaming = await measure_streaming_under_load(gateway)
        print("measuring a burst of connection opens ...", flush=True)
        burst = await measure_connection_burst(services)
    finally:
        await paths.close()
        await gateway.close()
        await direct.close()
        meter.close()
    return {"cpu_per_run": cpu, "throughput": throughput, "streaming_under_load": streaming, "connection_burst": burst}


def print_report(results: dict) -> None:
    cpu = results["cpu_per_run"]
    ttft = cpu["ttft_ms"]
    print(f"\n1. TTFT p50 at c=1: direct {ttft['direct_p50']:.1f} ms, gateway {ttft['gateway_p50']:.1f} ms, "
          f"added {ttft['added_p50']:+.1f} ms; in a named session (`user`) added {ttft['named_session_added_p50']:+.1f} ms")
    print(f"   CPU per simple run ({cpu['runs']} sequential streaming runs, {cpu['failed']} failed), ms per run")
    print(gb.format_table(list(cpu["ms_per_run"]), [[f"{v:.1f}" for v in cpu["ms_per_run"].values()]]))
    t = results["throughput"]
    print(f"\n2. Runs per second, {THROUGHPUT_RUNS} plain chat completions from {THROUGHPUT_CLIENTS} clients")
    print(gb.format_table(["path", "runs/s", "failed", "other cores"],
                          [[p, f"{t[p]['runs_per_second']:.1f}", t[p]["failed"], t[p]["other_cores"]] for p in t]))
    cores = t["gateway"].get("cores", {})
    print("   cores busy on the gateway path: " + ", ".join(f"{process} {used:.2f}" for process, used in cores.items()))
    if per_run := t["gateway"].get("ms_per_run"):
        print(f"   web + worker CPU per run meanwhile: {per_run['daphne'] + per_run['worker']:.1f} ms "
              f"(Daphne {per_run['daphne']:.1f}, the workers {per_run['worker']:.1f}; Postgres {per_run['postgres']:.1f}, "
              f"Redis {per_run['redis']:.1f})")
    if streaming := results.get("streaming_under_load"):
        print(f"\n   The same prompt as 1. from {streaming['clients']} clients streaming at once ({streaming['runs']} runs, "
              f"{streaming['failed']} failed): TTFT p50 {streaming['ttft_ms']['p50']:.1f} ms, "
              f"p99 {streaming['ttft_ms']['p99']:.1f} ms, {streaming['runs_per_second']:.1f} runs/s")
    b = results["connection_burst"]
    print(f"\n3. {b['connections']} connections opened at once: {b['lost']} lost (no answer within {BURST_TIMEOUT_SECONDS:g} s)")


def start_flower_as_make_run(env: dict, log_dir: Path, children: list, services: gb.Services, agent: str,
                             api_key: str) -> None:
    """Flower as `make run` starts it. It asks the workers for task events every 5 s, so from then on each task
    publishes its events, and Flower reads them: ready once it lists a task the gateway ran."""
    port = gb.free_port()
    argv = [sys.executable, "-m", "celery", "-A", "beamclaw_project", "flower", f"--port={port}", "--address=127.0.0.1"]
    flower_env = dict(env, FLOWER_BASIC_AUTH="bench:bench")
    children.append(gb.Process("flower", argv, flower_env, log_dir, cwd=gb.CODE_ROOT).start())
    body = {"model": agent, "messages": [{"role": "user", "content": "Hello"}]}

    def flower_sees_tasks() -> bool:
        try:
            httpx2.post(f"{services.gateway_url}/v1/chat/completions", json=body,
                       headers={"Authorization": f"Bearer {api_key}"}, timeout=10)
            tasks = httpx2.get(f"http://127.0.0.1:{port}/api/tasks", auth=("bench", "bench"), timeout=2)
        except httpx2.HTTPError:
            return False
        return tasks.status_code == 200 and bool(tasks.json())

    gb.wait_ready(flower_sees_tasks, what="Flower listing the workers' tasks", processes=children,
                  timeout=gb.STARTUP_TIMEOUT_SECONDS)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", action="store_true", help="py-spy profiles of Daphne and the worker")
    parser.add_argument(
        "--like-make-run", action="store_true",
        help="also run Flower, which has the workers publish task events, and log at INFO, as `make run` does",
    )
    parser.add_argument("--code", type=Path, help="measure the gateway of this checkout (default: this one)")
    parser.add_argument("--json", type=Path, default=RESULTS_PATH, help="where to write the results")
    parser.add_argument(
        "--paced", action="store_true",
        help="the plain completions of section 2 get replies paced like a model's (a delta every 10 ms)",
    )
    args = parser.parse_args()
    if args.paced:
        global PROMPT
        PROMPT = PROMPT.replace("[[deltas=20]][[delay_ms=2]]", PACED_DIRECTIVES)
    if args.code:
        gb.CODE_ROOT = args.code.resolve()
    began = time.monotonic()
    log_dir = Path(tempfile.mkdtemp(prefix="beamclaw-load-bench-"))
    print(f"logs: {log_dir}", flush=True)
    env = gb.base_env()
    if args.like_make_run:
        env["LOG_LEVEL"] = "INFO"
    agent, api_key = gb.prepare_state(env)
    children: list = []
    profiler = None
    try:
        services = gb.start_services(env, log_dir, children, gb.WORKER_CONCURRENCY)
        if args.like_make_run:
            start_flower_as_make_run(env, log_dir, children, services, agent, api_key)
        if args.profile:
            profiler = gb.Profiler(services, log_dir)
        results = asyncio.run(measure(services, agent, api_key))
    finally:
        if profiler is not None:
            for path in profiler.stop():
                print(f"profile: {path}")
        gb.stop_all(children)
    print_report(results)
    results["code"] = str(gb.CODE_ROOT)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nresults: {args.json}   took {time.monotonic() - began:.0f} s")
    return 0


if __name__ == "__main__":
    gb.run(main)
