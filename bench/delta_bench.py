#!/usr/bin/env python
"""What each text delta costs Daphne and the worker (see bench/README.md).

Uses gateway_bench.py's stack (its database, Redis db 14, the workers of `make run`, one Daphne) and sends
streaming and plain chat completions whose replies come as many deltas a few milliseconds apart (a fast
model's pace, slower than the worker's 2-ms joining window, so each delta travels on its own), then the same
with a one-delta reply. The difference, divided by the difference in deltas, is the CPU one delta costs
each process, from /proc. `--code DIR` measures another checkout (bench/compare.py's worktree, say).
Usage: .venv/bin/python bench/delta_bench.py [--code DIR] [--runs N]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import httpx2

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gateway_bench as gb  # noqa: E402

DELTAS = 200
DELAY_MS = 3
CLIENTS = 4
WORDS = " ".join(f"word{i}" for i in range(DELTAS))


def prompt(deltas: int) -> str:
    return f"{WORDS} [[deltas={deltas}]][[delay_ms={DELAY_MS}]]"


async def send_all(url: str, api_key: str, agent: str, *, stream: bool, deltas: int, runs: int) -> int:
    """`runs` completions from CLIENTS lanes; the number that came back whole."""
    body = {"model": agent, "stream": stream, "messages": [{"role": "user", "content": prompt(deltas)}]}
    headers = {"Authorization": f"Bearer {api_key}"}
    remaining = iter(range(runs))
    whole = 0

    async with httpx2.AsyncClient(timeout=gb.REQUEST_TIMEOUT) as http:
        async def lane():
            nonlocal whole
            for _ in remaining:
                if stream:
                    async with http.stream("POST", url, json=body, headers=headers) as response:
                        lines = [line async for line in response.aiter_lines()]
                    whole += response.status_code == 200 and lines[-2:] == ["data: [DONE]", ""]
                else:
                    response = await http.post(url, json=body, headers=headers)
                    whole += response.status_code == 200 and "Echo:" in response.json()["choices"][0]["message"]["content"]

        await asyncio.gather(*(lane() for _ in range(CLIENTS)))
    return whole


def cpu_ms_per_run(services: gb.Services, api_key: str, agent: str, *, stream: bool, deltas: int, runs: int) -> dict:
    url = f"{services.gateway_url}/v1/chat/completions"
    pids = {child.name: child.pid for child in services.children}
    before = {name: gb.process_cpu_seconds(pid) for name, pid in pids.items()}
    whole = asyncio.run(send_all(url, api_key, agent, stream=stream, deltas=deltas, runs=runs))
    after = {name: gb.process_cpu_seconds(pid) for name, pid in pids.items()}
    spent = {name: (after[name] - before[name]) * 1000 / runs for name in pids}
    return {
        "daphne": spent["daphne"],
        "worker": sum(ms for name, ms in spent.items() if name.startswith("worker")),
        "failed": runs - whole,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--code", type=Path, help="measure the gateway of this checkout (default: this one)")
    parser.add_argument("--runs", type=int, default=60, help="completions per measurement (default 60)")
    args = parser.parse_args()
    if args.code:
        gb.CODE_ROOT = args.code.resolve()
    began = time.monotonic()
    log_dir = Path(tempfile.mkdtemp(prefix="beamclaw-delta-bench-"))
    print(f"logs: {log_dir}", flush=True)
    env = gb.base_env()
    agent, api_key = gb.prepare_state(env)
    children: list = []
    rows = []
    try:
        services = gb.start_services(env, log_dir, children, gb.WORKER_CONCURRENCY)
        asyncio.run(send_all(f"{services.gateway_url}/v1/chat/completions", api_key, agent,
                             stream=True, deltas=DELTAS, runs=8))  # (warm up: imports, pools, prepared statements)
        for stream in (True, False):
            many = cpu_ms_per_run(services, api_key, agent, stream=stream, deltas=DELTAS, runs=args.runs)
            one = cpu_ms_per_run(services, api_key, agent, stream=stream, deltas=1, runs=args.runs)
            per_delta = {name: (many[name] - one[name]) * 1000 / (DELTAS - 1) for name in ("daphne", "worker")}
            rows.append((stream, many, one, per_delta))
    finally:
        gb.stop_all(children)
    print(f"\nCPU per run in ms ({args.runs} runs from {CLIENTS} clients, {DELTAS} deltas {DELAY_MS} ms apart or one "
          "delta), and per delta in microseconds")
    print(f"{'reply':<10} {'daphne':>8} {'worker':>8} {'1-delta daphne':>15} {'1-delta worker':>15} "
          f"{'us/delta daphne':>16} {'us/delta worker':>16} {'failed':>7}")
    for stream, many, one, per_delta in rows:
        print(f"{'streamed' if stream else 'plain':<10} {many['daphne']:>8.1f} {many['worker']:>8.1f} "
              f"{one['daphne']:>15.1f} {one['worker']:>15.1f} {per_delta['daphne']:>16.0f} {per_delta['worker']:>16.0f} "
              f"{many['failed'] + one['failed']:>7}")
    print(f"\ncode: {gb.CODE_ROOT}   took {time.monotonic() - began:.0f} s")
    return 0


if __name__ == "__main__":
    gb.run(main)
