#!/usr/bin/env python
"""What the exec sandbox adds to a command, per call.

Runs the same commands N times each way and prints p50/p99/mean wall time per call:

- plain: `subprocess.run(["/bin/sh", "-c", cmd])`, the floor;
- bwrap only: the sandbox's exact command line (setpriv + prlimit + bwrap + sh) run with subprocess.run, i.e.
  the cost of the namespaces and mounts alone;
- sandbox: tools.sandbox.sandbox_run + wait, everything exec does on a worker (uid switch, rlimits,
  bwrap, output reader and deadline thread, workspace preparation);
- sandbox+net: the same with sandbox.network (slirp4netns and the route set-up), when available.

Needs bwrap (scripts/ensure_sandbox_tools.sh). Self-contained: no database, Redis or worker; the
workspace lives in a temporary directory that is removed afterwards.
Usage: .venv/bin/python bench/exec_bench.py [-n 300] [--json bench/results/exec.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "beamclaw_project.settings")
WORKSPACE_ROOT = tempfile.mkdtemp(prefix="beamclaw-exec-bench-")
os.environ["BEAMCLAW_WORKSPACE_ROOT"] = WORKSPACE_ROOT

import django  # noqa: E402

django.setup()

from tools import sandbox  # noqa: E402

COMMANDS = ("true", "echo hi", "ls /usr/bin | wc -l")
SESSIONS = 16


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def measure(run, n: int) -> list[float]:
    run()  # warm-up: caches, first-use files
    timings = []
    for _ in range(n):
        started = time.perf_counter()
        run()
        timings.append((time.perf_counter() - started) * 1000)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=300, help="runs per command and mode (default 300)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    problem = sandbox.sandbox_problem(network=False)
    if problem:
        sys.exit(problem)
    network = sandbox.sandbox_problem(network=True) is None
    # Calls rotate over SESSIONS sessions, i.e. sandbox uids: the kernel frees a finished sandbox's pid
    # namespace a moment later, and one session firing execs back to back as fast as this loop does
    # would run into its own process cap (EXEC_MAX_PROCESSES), which a model's round trips never do.
    sessions = []
    for index in range(SESSIONS):
        uid = sandbox.sandbox_uid(tenant_slug="bench", scope=f"exec-{index}")
        sessions.append((uid, sandbox.workspace_prepare(tenant_slug="bench", scope=f"exec-{index}", uid=uid)))
    turn = itertools.cycle(sessions)

    def sandboxed(command: str, net: bool = False):
        def run():
            uid, workspace = next(turn)
            process = sandbox.sandbox_run(sandbox.SandboxSpec(command=command, workspace=workspace, uid=uid, network=net, timeout=30))
            process.wait(30)
            assert process.exit_code == 0, process.output.text()
        return run

    def bwrap_only(command: str):
        def run():
            uid, workspace = next(turn)
            info_fd = os.open(os.devnull, os.O_WRONLY)  # bwrap's --info-fd output is not needed here
            launch = sandbox.bwrap_launch(sandbox.SandboxSpec(command=command, workspace=workspace, uid=uid), info_fd=info_fd)
            try:
                subprocess.run(launch.argv, check=True, stdout=subprocess.DEVNULL, env={"PATH": "/usr/bin:/bin"},
                               pass_fds=(info_fd, *launch.pass_fds), **launch.identity)
            finally:
                for fd in (info_fd, *launch.own_fds):
                    os.close(fd)
        return run

    def plain(command: str):
        return lambda: subprocess.run(["/bin/sh", "-c", command], check=True, stdout=subprocess.DEVNULL)

    modes = {"plain": plain, "bwrap only": bwrap_only, "sandbox": sandboxed}
    if network:
        modes["sandbox+net"] = lambda command: sandboxed(command, net=True)

    results = {}
    print(f"{args.n} runs per cell, wall time per call in ms, on {os.cpu_count()} CPUs\n")
    print(f"{'command':<22} {'mode':<12} {'p50':>8} {'p99':>8} {'mean':>8} {'added p50':>10}")
    for command in COMMANDS:
        baseline = None
        for mode, factory in modes.items():
            timings = measure(factory(command), args.n)
            p50, p99, mean = percentile(timings, 0.5), percentile(timings, 0.99), statistics.fmean(timings)
            baseline = p50 if baseline is None else baseline
            results[f"{command} | {mode}"] = {"p50_ms": round(p50, 2), "p99_ms": round(p99, 2), "mean_ms": round(mean, 2)}
            print(f"{command:<22} {mode:<12} {p50:8.2f} {p99:8.2f} {mean:8.2f} {p50 - baseline:10.2f}")
    if args.json:
        args.json.write_text(json.dumps({"runs": args.n, "cpus": os.cpu_count(), "results": results}, indent=2))


if __name__ == "__main__":
    try:
        main()
    finally:
        shutil.rmtree(WORKSPACE_ROOT, ignore_errors=True)
