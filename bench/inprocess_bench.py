#!/usr/bin/env python
"""A run's two halves in one process, without Daphne or Celery: the queries each half sends and its CPU.

- web half: what POST /v1/chat/completions does before it streams (authenticate the key, find the agent,
  parse the request, create the ephemeral session and start the run: chat_start);
- worker half: the run's step 0 (sessions.runs.step.run_step), against the fake Anthropic server.

It prints the SQL of one run of each half, then the CPU milliseconds per run (time.process_time) over N
runs; `--profile web|worker` adds a cProfile (CPU time) of that half. Uses the database beamclaw_bench and
Redis db 14, which bench/load_bench.py or bench/gateway_bench.py create (run one of them first), and a tenant
of its own there. `--code DIR` measures another checkout (an older commit's `git worktree`) with the same
script. Usage: .venv/bin/python bench/inprocess_bench.py [-n 200] [--profile web|worker [--profile-out FILE]] [--code DIR]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import subprocess
import sys
import time
from io import StringIO
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TENANT_SLUG = "inprocess"
PROMPT = "Hello from the in-process benchmark [[deltas=20]][[delay_ms=0]]"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=200, help="runs measured (default 200)")
    parser.add_argument("--profile", choices=("web", "worker"))
    parser.add_argument("--profile-out", type=Path, help="also write the profile there, for pstats or snakeviz")
    parser.add_argument("--code", type=Path, default=ROOT, help="the checkout to measure (default: this one)")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    code = args.code.resolve()
    if args.profile_out is not None:
        args.profile_out = args.profile_out.resolve()  # (before the chdir below)
    sys.path.insert(0, str(code))
    os.chdir(code)
    os.environ.update(
        DATABASE_URL="postgres:///beamclaw_bench", REDIS_URL="redis://127.0.0.1:6379/14",
        DJANGO_SETTINGS_MODULE="beamclaw_project.settings", LOG_LEVEL="WARNING",
        BEAMCLAW_RATE_LIMIT_PER_MINUTE="1000000",
    )
    fake = subprocess.Popen([sys.executable, "-m", "tests.fakes.anthropic_server", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        port = next(line.split()[-1] for line in fake.stdout if "LISTENING" in line)
        os.environ.update(ANTHROPIC_BASE_URL=f"http://127.0.0.1:{port}", ANTHROPIC_API_KEY="bench-key")
        return measure(args)
    finally:
        fake.terminate()


def measure(args: argparse.Namespace) -> int:
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from sessions.chat import chat_start, parse_chat_request
    from sessions.models import Run
    from sessions.runs.step import run_step
    from tenants.auth import authenticate_key
    from tenants.models import ApiKey, Tenant
    from tenants.selectors import agent_by_slug

    Tenant.objects.filter(slug=TENANT_SLUG).delete()
    out = StringIO()
    call_command("create_tenant", TENANT_SLUG, "--agent", "bench", stdout=out)
    key = json.loads(out.getvalue())["api_key"]
    Tenant.objects.filter(slug=TENANT_SLUG).update(max_concurrent_runs=100_000)
    body = {"model": "bench", "stream": True, "messages": [{"role": "user", "content": PROMPT}]}

    def authenticate(key):
        """As the OpenAI edge does: the key and the agent from one query where the checkout can."""
        try:
            from tenants.auth import authenticate_key_for_agent
        except ImportError:  # a checkout from before that function
            principal = authenticate_key(key, scope="chat")
            return principal, agent_by_slug(tenant=principal.tenant, slug="bench")
        return authenticate_key_for_agent(key, "bench", scope="chat")

    def web_half():
        principal, agent = authenticate(key)
        request = parse_chat_request(json.loads(json.dumps(body)), session_header=None, queue_mode_header=None,
                                     session_mode_header=None)
        return chat_start(tenant=principal.tenant, agent=agent, request=request).run

    def worker_half(run):
        run_step(run_id=str(run.pk), step=0)

    for _ in range(5):  # warm-up: imports, connections, the SDK client
        worker_half(web_half())
    with CaptureQueriesContext(connection) as web_queries:
        run = web_half()
    with CaptureQueriesContext(connection) as worker_queries:
        worker_half(run)
    for name, captured in (("web", web_queries), ("worker", worker_queries)):
        print(f"{name} half: {len(captured.captured_queries)} statements")
        for query in captured.captured_queries:
            print(f"  {' '.join(str(query['sql']).split())[:140]}")

    profile = cProfile.Profile(time.process_time)
    runs = []
    started = time.process_time()
    if args.profile == "web":
        profile.enable()
    for _ in range(args.n):
        runs.append(web_half())
    profile.disable()
    web_done = time.process_time()
    if args.profile == "worker":
        profile.enable()
    for run in runs:
        worker_half(run)
    profile.disable()
    worker_done = time.process_time()
    succeeded = Run.objects.filter(pk__in=[r.pk for r in runs], status=Run.Status.SUCCEEDED).count()
    print(f"\n{args.n} runs, {succeeded} succeeded; CPU per run: web half {1000 * (web_done - started) / args.n:.2f} ms, "
          f"worker half {1000 * (worker_done - web_done) / args.n:.2f} ms")
    if args.profile:
        print("(under cProfile, which costs several times the code it measures)\n")
        pstats.Stats(profile).sort_stats("cumulative").print_stats(40)
        if args.profile_out:
            profile.dump_stats(args.profile_out)
            print(f"profile: {args.profile_out} (python -m pstats {args.profile_out})")
    ApiKey.objects.filter(tenant__slug=TENANT_SLUG).delete()
    return 0


if __name__ == "__main__":
    sys.exit(main())
