#!/usr/bin/env python
"""Cron benchmark: 10,000 enabled jobs under one django-celery-beat, against the fake Anthropic server.

One command, self-contained: it recreates its own database (beamclaw_bench_cron), flushes its own Redis db
(10), creates the tenants and jobs through the same service the API uses, starts the fake model server,
the workers (as `make run`: one per core up to two; `--workers N`: N) and one beat, measures for a bounded window, prints a table and stops every process it started
(also on Ctrl-C, SIGTERM or an error).

The job mix (defaults): 100 tenants; 90% `every 1h` jobs with anchors spread evenly over the hour (a
steady 2.5 occurrences/s), 10% `* * * * *` cron jobs in four zones (a burst of 1,000 at every minute
boundary). `--every` and `--cron-share` change the mix. Every job runs in an isolated session, so runs never wait behind each other in one session.

Figures:
- beat: resident memory (VmRSS) after loading the schedule and at its peak, CPU share, start-up time;
- lag between an occurrence's scheduled time and (a) its claim by the fire task (the CronRun row), and
  (b) the start of its agent run, p50/p90/p99/max, per kind;
- occurrences expected in the window vs claimed (missed ones would show here), and who woke them (beat or
  the sweeper, which steps in when beat is more than BEAMCLAW_CRON_SWEEP_SLACK_SECONDS late).

    .venv/bin/python bench/cron_bench.py [--jobs 10000] [--tenants 100] [--window 120] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
import redis

ROOT = Path(__file__).resolve().parent.parent
DATABASE_NAME = "beamclaw_bench_cron"
DATABASE_URL = f"postgres:///{DATABASE_NAME}"
REDIS_URL = "redis://127.0.0.1:6379/10"
CRON_ZONES = ("UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata")
WORKER_CONCURRENCY = 200
STARTUP_TIMEOUT = 120.0
UTC = timezone.utc

os.environ.update(
    DATABASE_URL=DATABASE_URL, REDIS_URL=REDIS_URL, DJANGO_SETTINGS_MODULE="beamclaw_project.settings",
    LOG_LEVEL="WARNING",
)
os.environ.pop("CELERY_BROKER_URL", None)
sys.path.insert(0, str(ROOT))
from tests.procs import Process, free_port, wait_ready  # noqa: E402


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


def prepare_database() -> None:
    with psycopg.connect(dbname="postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DATABASE_NAME}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DATABASE_NAME}"')
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, check=True)
    redis.Redis.from_url(REDIS_URL).flushdb()


def create_jobs(*, jobs: int, tenants: int, cron_share: float, every: int) -> tuple[float, datetime]:
    """Create the tenants and jobs through cron.services (PeriodicTask rows included); returns the
    seconds it took and the base of the `every` anchors."""
    from django.db import transaction

    from cron.schedule import Cron, Every, cron_parse
    from cron.services import cron_job_create
    from tenants.models import Tenant
    from tenants.services import tenant_create

    bundles = []
    for n in range(tenants):
        tenant, agent, _ = tenant_create(slug=f"bench-{n:03d}", agent_slug="bench")
        bundles.append((tenant, agent))
    # The tenants' concurrency cap is not what is measured here.
    Tenant.objects.update(max_concurrent_runs=1000)
    cron_jobs = int(jobs * cron_share)
    every_jobs = jobs - cron_jobs
    base = datetime.now(UTC).replace(microsecond=0)
    text, parsed = cron_parse("* * * * *")
    started = time.monotonic()
    for start in range(0, jobs, 500):
        with transaction.atomic():
            for i in range(start, min(jobs, start + 500)):
                tenant, agent = bundles[i % tenants]
                if i < every_jobs:
                    schedule = Every(seconds=every, anchor=base + timedelta(seconds=every * i / every_jobs))
                else:
                    schedule = Cron(expr=text, tz=CRON_ZONES[i % len(CRON_ZONES)], parsed=parsed)
                cron_job_create(tenant=tenant, agent=agent, name=f"job-{i}", prompt=f"Report {i}.",
                                schedule=schedule, session_target="isolated")
        print(f"  created {min(jobs, start + 500):>6} jobs", end="\r", flush=True)
    print()
    return time.monotonic() - started, base


def expected_occurrences(window_start: datetime, window_end: datetime) -> dict[str, int]:
    from cron.models import CronJob

    expected = {"every": 0, "cron": 0}
    for job in CronJob.objects.all().iterator():
        moment = window_start - timedelta(microseconds=1)
        schedule = job.schedule
        while True:
            moment = schedule.next_after(moment)
            if moment is None or moment >= window_end:
                break
            expected[job.kind] += 1
    return expected


def measure(window_start: datetime, window_end: datetime) -> dict:
    from cron.models import CronRun

    rows = CronRun.objects.filter(scheduled_for__gte=window_start, scheduled_for__lt=window_end).values_list(
        "job__kind", "scheduled_for", "started_at", "run__started_at", "status", "trigger"
    )
    result = {"bursts": {}}
    for kind_of, scheduled_for, _, run_started_at, _, _ in rows:
        if kind_of == "cron" and run_started_at is not None:
            result["bursts"].setdefault(scheduled_for, []).append((run_started_at - scheduled_for).total_seconds())
    for kind in ("every", "cron", "all"):
        picked = [r for r in rows if kind in ("all", r[0])]
        result[kind] = {
            "claimed": len(picked),
            "claim_lag": [(r[2] - r[1]).total_seconds() for r in picked],
            "start_lag": [(r[3] - r[1]).total_seconds() for r in picked if r[3] is not None],
            "statuses": {s: sum(1 for r in picked if r[4] == s) for s in ("succeeded", "failed", "skipped", "running")},
            "triggers": {t: sum(1 for r in picked if r[5] == t) for t in ("beat", "sweeper")},
        }
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--cron-share", type=float, default=0.1, help="share of `* * * * *` jobs (the rest: every)")
    parser.add_argument("--every", type=int, default=3600, help="interval of the `every` jobs, seconds")
    parser.add_argument("--window", type=float, default=120.0, help="seconds of occurrences measured")
    parser.add_argument("--scheduler", default="cron.scheduler:CronScheduler",
                        help="beat scheduler class (default: the one the Procfile runs; the stock one is "
                             "django_celery_beat.schedulers:DatabaseScheduler)")
    parser.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 2),
                        help="worker processes (default: as `make run`, one per core up to two)")
    parser.add_argument("--log-dir", type=Path, default=Path("/tmp/beamclaw-cron-bench"))
    parser.add_argument("--json", type=Path, help="also write the lags (p50/p99 per kind, seconds) here")
    args = parser.parse_args()
    args.log_dir.mkdir(parents=True, exist_ok=True)
    children: list[Process] = []

    def stop_all(*_):
        for child in reversed(children):
            child.stop()
        raise SystemExit(1)

    signal.signal(signal.SIGTERM, stop_all)
    try:
        print(f"database {DATABASE_NAME}, redis {REDIS_URL}, logs in {args.log_dir}")
        prepare_database()
        import django

        django.setup()
        from cron.models import CronRun

        creation_seconds, _ = create_jobs(
            jobs=args.jobs, tenants=args.tenants, cron_share=args.cron_share, every=args.every
        )
        env = dict(os.environ)
        port = free_port()
        fake = Process("fake-llm", [sys.executable, "-m", "tests.fakes.anthropic_server", "--port", str(port)], env,
                       args.log_dir).start()
        children.append(fake)
        env.update(ANTHROPIC_BASE_URL=f"http://127.0.0.1:{port}", ANTHROPIC_API_KEY="bench")
        for n in range(args.workers):
            children.append(Process(f"worker{n}", [sys.executable, "manage.py", "worker", "-c", str(WORKER_CONCURRENCY),
                                                   "-n", f"bench{n}@%h", "-l", "WARNING"], env, args.log_dir).start())
        wait_ready(lambda: len(redis.Redis.from_url(REDIS_URL).keys("bc:worker:*")) >= args.workers, what="the workers",
                   processes=children, timeout=STARTUP_TIMEOUT)
        beat_started = time.monotonic()
        beat = Process("beat", [sys.executable, "-m", "celery", "-A", "beamclaw_project", "beat", "-l", os.environ.get("BENCH_BEAT_LOG", "WARNING"),
                                "-S", args.scheduler,
                                "--schedule", str(args.log_dir / "beat-schedule"), "--pidfile", ""],
                       env, args.log_dir).start()
        children.append(beat)
        wait_ready(lambda: CronRun.objects.filter(trigger="beat").exists(), what="beat's first wake-up",
                   processes=children, timeout=STARTUP_TIMEOUT)
        beat_ready = time.monotonic() - beat_started
        loaded_rss = rss_mib(beat.proc.pid)
        window_start = datetime.now(UTC) + timedelta(seconds=5)
        window_end = window_start + timedelta(seconds=args.window)
        cpu_before, wall_before = cpu_seconds(beat.proc.pid), time.monotonic()
        peak_rss = loaded_rss
        print(f"measuring occurrences from {window_start:%H:%M:%S} to {window_end:%H:%M:%S} UTC")
        while datetime.now(UTC) < window_end + timedelta(seconds=2):
            for child in children:
                child.ensure_alive()
            peak_rss = max(peak_rss, rss_mib(beat.proc.pid))
            time.sleep(0.5)
        beat_cpu = (cpu_seconds(beat.proc.pid) - cpu_before) / (time.monotonic() - wall_before)
        final_rss = rss_mib(beat.proc.pid)
        beat.stop()
        # Let in-flight runs start (the lag of the last occurrences counts too).
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and CronRun.objects.filter(
            scheduled_for__lt=window_end, status="running", run__started_at__isnull=True
        ).exists():
            time.sleep(0.5)
        results = measure(window_start, window_end)
        expected = expected_occurrences(window_start, window_end)
    finally:
        for child in reversed(children):
            child.stop()

    expected["all"] = expected["every"] + expected["cron"]
    print()
    print(f"jobs: {args.jobs} enabled ({args.jobs - int(args.jobs * args.cron_share)} every {args.every}s, "
          f"{int(args.jobs * args.cron_share)} '* * * * *'), {args.tenants} tenants; created in {creation_seconds:.1f} s "
          f"({args.jobs / creation_seconds:.0f}/s, PeriodicTask rows included)")
    print(f"beat ({args.scheduler}): ready after {beat_ready:.1f} s; RSS {loaded_rss:.0f} MiB loaded, {peak_rss:.0f} MiB peak, "
          f"{final_rss:.0f} MiB at the end; CPU {beat_cpu * 100:.0f}% of one core over the window")
    print()
    header = f"{'kind':<6} {'expected':>8} {'claimed':>8} {'beat':>6} {'sweeper':>7} {'skipped':>7} " \
             f"{'claim lag p50/p90/p99/max (s)':>32} {'run start lag p50/p99 (s)':>27}"
    print(header)
    print("-" * len(header))
    for kind in ("every", "cron", "all"):
        r = results[kind]
        claim = r["claim_lag"]
        start = r["start_lag"]
        claim_text = "/".join(f"{percentile(claim, p):.3f}" for p in (50, 90, 99)) + f"/{max(claim, default=float('nan')):.3f}"
        start_text = f"{percentile(start, 50):.3f}/{percentile(start, 99):.3f}"
        print(f"{kind:<6} {expected[kind]:>8} {r['claimed']:>8} {r['triggers']['beat']:>6} {r['triggers']['sweeper']:>7} "
              f"{r['statuses']['skipped']:>7} {claim_text:>32} {start_text:>27}")
    print()
    for instant, lags in sorted(results["bursts"].items()):
        print(f"burst at {instant:%H:%M:%S}: {len(lags)} occurrences, run start lag p50/p99/max "
              f"{percentile(lags, 50):.3f}/{percentile(lags, 99):.3f}/{max(lags):.3f} s")
    print("claim lag: scheduled time -> the fire task's claim (CronRun row); run start lag: -> the agent run started")
    if results["all"]["claim_lag"]:
        print(f"mean claim lag {statistics.fmean(results['all']['claim_lag']):.3f} s over {results['all']['claimed']} occurrences")
    if args.json:
        args.json.write_text(json.dumps({
            kind: {"expected": expected[kind], "claimed": r["claimed"],
                   **{f"{lag}_p{p}_s": round(percentile(r[lag], p), 3) for lag in ("claim_lag", "start_lag") for p in (50, 99)}}
            for kind, r in results.items() if kind != "bursts"
        }, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
