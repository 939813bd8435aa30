#!/usr/bin/env python
"""Discord channel benchmark: one `run_discord` process hosting 100 bot accounts under 1,000 DMs a minute.

One command, self-contained (see bench/README.md): it recreates its own database (beamclaw_bench_discord),
flushes its own Redis db (8), starts the fake Discord (tests/fakes/discord_server.py), the fake model
(tests/fakes/anthropic_server.py), one worker (`manage.py worker -c 50`) and `manage.py run_discord`,
measures, prints a table, writes bench/results/discord.json and stops every process it started, also on
Ctrl-C, SIGTERM or an error.

1. run_discord's CPU (seconds, % of one core) and RSS, idle with every account connected and under load.
2. Time to connect every account from the process start, and from an account's creation while it runs.
3. Latency from the moment the fake Discord dispatched a user's DM (the message's timestamp) to the bot's
   first outbound call (the typing POST on that DM), to the model request reaching the fake model, and to
   the reply POST; next to the model's own time to first token / total, measured with the anthropic SDK
   against the same fake model.
4. Delivery: every message must get exactly one reply, with the expected text.

    .venv/bin/python bench/discord_bench.py [--quick] [--accounts 100] [--rate 1000] [--duration 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter, defaultdict
from datetime import datetime, timezone
from pathlib import Path

import anthropic
import httpx
import psycopg
import redis

ROOT = Path(__file__).resolve().parent.parent
RESULTS_PATH = ROOT / "bench" / "results" / "discord.json"

DATABASE_NAME = "beamclaw_bench_discord"
DATABASE_URL = f"postgres:///{DATABASE_NAME}"
REDIS_URL = "redis://127.0.0.1:6379/8"
AGENT_SLUG = "assistant"
DIRECT_MODEL = "claude-sonnet-4-5"  # what the worker sends for an agent with default settings
DIRECT_MAX_TOKENS = 4096

STARTUP_TIMEOUT = 60.0
CONNECT_TIMEOUT = 180.0  # all accounts connected after run_discord starts; bounds a hang
DRAIN_TIMEOUT = 90.0  # after the last message, for the last replies
DUPLICATE_GRACE = 5.0  # after the last expected reply, for late duplicates
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PROBE_INTERVAL = 1.0  # the direct model probe during the load
LLM_POLL_INTERVAL = 4.0  # fetching the fake model's request log during the load (it keeps the last 1,000)
LOG_PATTERN = re.compile(r"\b(WARNING|ERROR|CRITICAL|Traceback|Exception)\b")

# The SDK warns on every call with a dated model id; the id does not matter to the fake server.
warnings.filterwarnings("ignore", message=r"The model '.*' is deprecated")

os.environ.update(
    DATABASE_URL=DATABASE_URL, REDIS_URL=REDIS_URL, DJANGO_SETTINGS_MODULE="beamclaw_project.settings",
    LOG_LEVEL="WARNING",
)
os.environ.pop("CELERY_BROKER_URL", None)  # the broker then follows REDIS_URL
sys.path.insert(0, str(ROOT))  # run as a script, only bench/ is on the path
from tests.procs import Process, wait_ready  # noqa: E402

# --------------------------------------------------------------------------------------------------
# /proc
# --------------------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def thread_count(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Threads:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def machine_busy_seconds() -> float:
    user, nice, system, idle, iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


class CpuMeter:
    """CPU seconds of every process involved, from /proc: the children by name, this script ("bench"),
    the Redis server, the Postgres backends connected to the bench database, and "other": the rest of the
    machine (other users' work competes for the same cores and skews every number)."""

    def __init__(self, children: list[Process]):
        self.pids = {child.name: child.pid for child in children}
        self.redis_pid = redis.Redis.from_url(REDIS_URL).info("server")["process_id"]
        self.pg = psycopg.connect(dbname=DATABASE_NAME, autocommit=True)

    def close(self) -> None:
        self.pg.close()

    def snapshot(self) -> dict:
        usage = {name: {pid: cpu_seconds(pid)} for name, pid in self.pids.items()}
        usage["bench"] = {os.getpid(): sum(os.times()[:2])}
        usage["redis"] = {self.redis_pid: cpu_seconds(self.redis_pid)}
        backends = self.pg.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", [DATABASE_NAME]
        ).fetchall()
        usage["postgres"] = {pid: cpu_seconds(pid) for (pid,) in backends}
        usage["machine"] = {0: machine_busy_seconds()}
        usage["at"] = {0: time.monotonic()}
        return usage

    @staticmethod
    def used(before: dict, after: dict) -> dict:
        """{name: cpu seconds} between two snapshots, "other", and the window in seconds."""
        wall = after["at"][0] - before["at"][0]
        used = {
            name: sum(seconds - before.get(name, {}).get(pid, 0.0) for pid, seconds in pids.items())
            for name, pids in after.items() if name != "at"
        }
        machine = used.pop("machine")
        used["other"] = max(0.0, machine - sum(used.values()))
        return {"window_s": round(wall, 2), "cpu_s": {k: round(v, 2) for k, v in used.items()},
                "machine_cores_busy": round(machine / wall, 2) if wall else None}


class RssSampler:
    """run_discord's RSS every half second in the background (for the max and the mean)."""

    def __init__(self, pid: int):
        self.pid = pid
        self.samples: list[float] = []

    def sample(self) -> None:
        self.samples.append(rss_mib(self.pid))

    def summary(self) -> dict:
        if not self.samples:
            return {"start": None, "end": None, "max": None, "mean": None}
        return {"start": round(self.samples[0], 1), "end": round(self.samples[-1], 1),
                "max": round(max(self.samples), 1), "mean": round(sum(self.samples) / len(self.samples), 1)}


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


def stats_ms(values_s: list[float]) -> dict:
    out = {"n": len(values_s)}
    for name, q in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100)):
        value = percentile(values_s, q)
        out[name] = None if value is None else round(value * 1000, 1)
    return out


def stats_s(values_s: list[float]) -> dict:
    out = {"n": len(values_s)}
    for name, q in (("min", 0), ("p50", 50), ("p90", 90), ("max", 100)):
        value = percentile(values_s, q)
        out[name] = None if value is None else round(value, 2)
    return out


def iso_epoch(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


# --------------------------------------------------------------------------------------------------
# State and processes
# --------------------------------------------------------------------------------------------------


def manage(env: dict, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-15:])
        raise RuntimeError(f"manage.py {' '.join(args)} failed; its last lines:\n{tail}")
    return result.stdout


def prepare_state(env: dict) -> None:
    """Recreate and migrate the bench database, flush the bench Redis db: runs an interrupted bench left
    "running" would otherwise be reaped by the new worker in the middle of the measurement."""
    with psycopg.connect(dbname="postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DATABASE_NAME}" WITH (FORCE)')
    manage(env, "ensure_database")
    manage(env, "migrate", "--noinput", "-v", "0")
    redis.Redis.from_url(REDIS_URL).flushdb()


def start_listening(name: str, module: str, env: dict, log_dir: Path, started: list[Process]) -> str:
    """A fake server on a free port (it prints LISTENING <port>); its base URL."""
    proc = Process(name, [sys.executable, "-m", module, "--port", "0"], env, log_dir).start()
    started.append(proc)

    def port():
        match = re.search(r"LISTENING (\d+)", proc.log_path.read_text(errors="replace"))
        return match and match.group(1)

    return f"http://127.0.0.1:{wait_ready(port, what=name, processes=[proc], timeout=STARTUP_TIMEOUT)}"


class FakeDiscord:
    def __init__(self, url: str):
        self.url = url
        self.http = httpx.Client(base_url=f"{url}/_fake", timeout=30)

    def bot(self, index: int) -> dict:
        token = f"bench-bot-{index:04d}-{os.urandom(8).hex()}"
        user = self.http.post("/bots", json={"token": token, "username": f"bench-bot-{index:04d}"}).raise_for_status().json()
        return {**user, "token": token}

    def connected(self) -> set[str]:
        return {bot_id for bot_id, c in self.http.get("/connections").raise_for_status().json().items() if c["connected"]}

    def get(self, what: str) -> list[dict]:
        return self.http.get(f"/{what}").raise_for_status().json()


def create_tenants(count: int) -> list:
    from tenants.models import Tenant
    from tenants.services import tenant_create

    bundles = []
    for n in range(count):
        tenant, agent, _ = tenant_create(slug=f"dbench-{n:03d}", agent_slug=AGENT_SLUG)
        bundles.append((tenant, agent))
    # A tenant runs 10 runs at once by default; the excess waits its turn. That cap is a tenant's policy,
    # not what this bench measures.
    Tenant.objects.update(max_concurrent_runs=100_000)
    return bundles


def create_account(bundle, bot: dict, index: int):
    from channels_app import accounts

    tenant, agent = bundle
    return accounts.channel_account_create(
        tenant=tenant, kind="discord", name=f"bench-{index:04d}", agent=agent, secret=bot["token"],
        config={"dm_policy": "open"},
    )


def wait_connected(fake: FakeDiscord, bot_ids: list[str], since: float, children: list[Process],
                   timeout: float) -> dict[str, float]:
    """Poll the fake's connections every 100 ms; {bot id: seconds from `since` to its first sighting as
    connected}. Bots still not connected at the timeout are missing from the answer."""
    wanted, seen = set(bot_ids), {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(seen) < len(wanted):
        for child in children:
            child.ensure_alive()
        now = time.time()
        for bot_id in fake.connected() & wanted:
            seen.setdefault(bot_id, now - since)
        time.sleep(0.1)
    return seen


def db_connected_times(since: dict[int, float], timeout: float) -> tuple[list[float], Counter]:
    """Seconds from its `since` to each account's status=connected, as written by run_discord's on_ready
    (discord.py fires it a little after READY), waiting up to `timeout` for all; and the statuses."""
    from django.db import connection

    from channels_app.models import ChannelAccount

    deadline = time.monotonic() + timeout
    while True:
        rows = list(ChannelAccount.objects.filter(pk__in=list(since)).values_list("pk", "status", "updated_at"))
        done = all(status == "connected" for _, status, _ in rows)
        if done or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    connection.close()
    statuses = Counter(status for _, status, _ in rows)
    return [at.timestamp() - since[pk] for pk, status, at in rows if status == "connected"], statuses


def log_findings(path: Path, limit: int = 12) -> dict:
    """Warnings, errors and tracebacks in a child's log: a count and the first lines."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return {"count": 0, "excerpt": []}
    hits = [i for i, line in enumerate(lines) if LOG_PATTERN.search(line)]
    excerpt = []
    for i in hits[:limit]:
        excerpt.append(lines[i][:400])
    return {"count": len(hits), "lines": len(lines), "excerpt": excerpt}


# --------------------------------------------------------------------------------------------------
# The model on its own
# --------------------------------------------------------------------------------------------------


async def direct_stream(sdk: anthropic.AsyncAnthropic, prompt: str) -> tuple[float | None, float | None]:
    """(time to first text delta, total) of one streamed request straight to the fake model."""
    started = time.perf_counter()
    first = None
    try:
        stream = await sdk.messages.create(model=DIRECT_MODEL, max_tokens=DIRECT_MAX_TOKENS, stream=True,
                                           messages=[{"role": "user", "content": prompt}])
        async with stream:
            async for event in stream:
                if first is None and event.type == "content_block_delta" and getattr(event.delta, "text", ""):
                    first = time.perf_counter() - started
    except anthropic.APIError:
        return None, None
    return first, time.perf_counter() - started


async def direct_batch(llm_url: str, prompt: str, count: int) -> tuple[list[float], list[float]]:
    sdk = anthropic.AsyncAnthropic(base_url=llm_url, api_key="bench", max_retries=0, timeout=60.0)
    try:
        await direct_stream(sdk, prompt)  # warm-up
        ttfts, totals = [], []
        for _ in range(count):
            ttft, total = await direct_stream(sdk, prompt)
            if ttft is not None:
                ttfts.append(ttft)
                totals.append(total)
        return ttfts, totals
    finally:
        await sdk.close()


def warm_up(fake: FakeDiscord, bots: list[dict], rate_per_min: float, ttft_ms: int, children: list[Process]) -> set[str]:
    """One DM per bot at the load's rate, and every reply awaited: the worker's threads, their database
    connections and SDK clients, and run_discord's code paths are warm before anything is measured.
    Returns the warm-up messages' ids (their replies are not the load's)."""
    ids = set()
    for n, bot in enumerate(bots):
        index = 900_000 + n
        user_id = str(10**17 + 7_000_000 + index)
        ids.add(fake.http.post("/messages", json={
            "dm": {"bot_id": bot["id"], "user_id": user_id}, "author": {"id": user_id, "username": f"warm{n}"},
            "content": message_text(index, ttft_ms)}).raise_for_status().json()["id"])
        time.sleep(60.0 / rate_per_min)

    def all_replied():
        replied = {(m.get("message_reference") or {}).get("message_id") for m in fake.get("sent")}
        return ids <= replied

    wait_ready(all_replied, what="the warm-up's replies", processes=children, timeout=DRAIN_TIMEOUT)
    return ids


# --------------------------------------------------------------------------------------------------
# The load
# --------------------------------------------------------------------------------------------------

MESSAGE_TAG = re.compile(r"bench message (\d{6})")


def message_text(index: int, ttft_ms: int) -> str:
    return f"bench message {index:06d} [[ttft_ms={ttft_ms}]]"


def expected_reply(index: int) -> str:
    return f"Echo: bench message {index:06d}"


async def run_load(*, fake_url: str, llm_url: str, bots: list[dict], rate_per_min: float, duration: float,
                   ttft_ms: int, children: list[Process], run_discord: Process, meter: CpuMeter) -> dict:
    """Open loop: message i is due at start + i * 60 / rate, whatever happened to the ones before (each
    is its own task). Message i is a DM to bot i % len(bots) from a user of its own, so every message is
    a conversation of its own and its typing and reply are unambiguous."""
    total = int(rate_per_min * duration / 60)
    interval = 60.0 / rate_per_min
    http = httpx.AsyncClient(base_url=f"{fake_url}/_fake", timeout=30,
                             limits=httpx.Limits(max_connections=200, max_keepalive_connections=200))
    llm_http = httpx.AsyncClient(base_url=llm_url, timeout=30)
    sdk = anthropic.AsyncAnthropic(base_url=llm_url, api_key="bench", max_retries=0, timeout=60.0)
    sent: dict[int, dict] = {}
    failures: list[str] = []
    model_requests: dict[int, float] = {}
    probes: list[tuple[float, float]] = []
    rss = RssSampler(run_discord.pid)
    stop_side = asyncio.Event()

    async def send(index: int, due: float) -> None:
        bot = bots[index % len(bots)]
        user_id = str(10**17 + 7_000_000 + index)
        body = {"dm": {"bot_id": bot["id"], "user_id": user_id},
                "author": {"id": user_id, "username": f"user{index:06d}"}, "content": message_text(index, ttft_ms)}
        posted_at = time.time()
        try:
            response = await http.post("/messages", json=body)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            failures.append(f"message {index}: {type(exc).__name__}: {exc}")
            return
        data = response.json()
        sent[index] = {"id": data["id"], "channel_id": data["channel_id"], "bot_id": bot["id"],
                       "at": iso_epoch(data["timestamp"]), "due": due, "posted_at": posted_at}

    async def poll_model_requests() -> None:
        while not stop_side.is_set():
            await fetch_model_requests()
            try:
                await asyncio.wait_for(stop_side.wait(), LLM_POLL_INTERVAL)
            except TimeoutError:
                pass

    async def fetch_model_requests() -> None:
        try:
            recorded = (await llm_http.get("/_fake/requests", params={"limit": 1000})).json()
        except (httpx.HTTPError, ValueError):
            return
        for request in recorded:
            body = request.get("body") or {}
            messages = body.get("messages") or []
            last = next((m for m in reversed(messages) if m.get("role") == "user"), None)
            content = (last or {}).get("content")
            text = content if isinstance(content, str) else "".join(
                b.get("text", "") for b in content or [] if isinstance(b, dict))
            if match := MESSAGE_TAG.search(text):
                index = int(match.group(1))
                model_requests[index] = min(model_requests.get(index, math.inf), request["at"])

    async def probe() -> None:
        """The model's own TTFT under the same machine load, one request a second."""
        while not stop_side.is_set():
            ttft, total_s = await direct_stream(sdk, f"probe [[ttft_ms={ttft_ms}]]")
            if ttft is not None:
                probes.append((ttft, total_s))
            try:
                await asyncio.wait_for(stop_side.wait(), PROBE_INTERVAL)
            except TimeoutError:
                pass

    async def sample_rss() -> None:
        while not stop_side.is_set():
            rss.sample()
            for child in children:
                child.ensure_alive()
            await asyncio.sleep(0.5)

    side = [asyncio.create_task(poll_model_requests()), asyncio.create_task(probe()),
            asyncio.create_task(sample_rss())]
    tasks = []
    before = meter.snapshot()
    start = time.time() + 0.2
    try:
        for index in range(total):
            due = start + index * interval
            delay = due - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(send(index, due)))
        await asyncio.gather(*tasks)
        load_cpu = CpuMeter.used(before, meter.snapshot())
        load_rss = rss.summary()
        load_ended = time.time()
        # Drain: wait for a reply to every message, then a little longer for late duplicates.
        replies_seen_at = None
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while time.monotonic() < deadline:
            replied = {m.get("message_reference", {}).get("message_id") for m in (await http.get("/sent")).json()}
            if all(s["id"] in replied for s in sent.values()):
                replies_seen_at = time.time()
                break
            await asyncio.sleep(1.0)
        await asyncio.sleep(DUPLICATE_GRACE)
        drain_s = (replies_seen_at or time.time()) - load_ended
    finally:
        stop_side.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*side, *tasks, return_exceptions=True)
    await fetch_model_requests()
    outbound = {"sent": (await http.get("/sent")).json(), "typing": (await http.get("/typing")).json(),
                "requests": (await http.get("/requests")).json()}
    await http.aclose()
    await llm_http.aclose()
    await sdk.close()
    return {"total": total, "sent": sent, "failures": failures, "model_requests": model_requests,
            "probes": probes, "cpu": load_cpu, "rss": load_rss, "rss_samples": rss.samples,
            "drain_s": round(drain_s, 2), "all_replied": replies_seen_at is not None,
            "window_start": start, "outbound": outbound}


def run_times(sent: dict[int, dict]) -> dict[int, dict]:
    """{message index: epoch seconds of its run's created/started/finished} from the bench database (a run
    names the platform message it answers in params.channel.message_id)."""
    from django.db import connection

    from sessions.models import Run

    index_of = {s["id"]: i for i, s in sent.items()}
    times = {}
    for params, created, started, finished in Run.objects.filter(trigger="channel").values_list(
        "params", "created_at", "started_at", "finished_at"
    ):
        index = index_of.get(((params or {}).get("channel") or {}).get("message_id"))
        if index is not None:
            times[index] = {"created": created.timestamp(), "started": started and started.timestamp(),
                            "finished": finished and finished.timestamp()}
    connection.close()
    return times


def analyse(load: dict, runs: dict[int, dict], ignored: set[str]) -> dict:
    """Match each inbound message to its typing calls, its run and its replies."""
    sent, outbound = load["sent"], load["outbound"]
    by_reference = defaultdict(list)
    unexpected = []
    inbound_ids = {s["id"]: i for i, s in sent.items()}
    for message in outbound["sent"]:
        reference = (message.get("message_reference") or {}).get("message_id")
        if reference in inbound_ids:
            by_reference[inbound_ids[reference]].append(message)
        elif reference not in ignored:  # the warm-up's replies
            unexpected.append({"channel_id": message["channel_id"], "content": message["content"][:120]})
    typing = defaultdict(list)
    for call in outbound["typing"]:
        typing[call["channel_id"]].append(call["at"])
    lost, duplicated, wrong = [], [], []
    to_typing, to_reply, to_model, model_to_reply, typing_missing = [], [], [], [], []
    segments = defaultdict(list)
    records = []
    for index, inbound in sorted(sent.items()):
        replies = by_reference.get(index, [])
        calls = sorted(at for at in typing.get(inbound["channel_id"], []) if at >= inbound["at"] - 0.001)
        run = runs.get(index, {})
        model_at = load["model_requests"].get(index)
        reply_at = min((iso_epoch(r["timestamp"]) for r in replies), default=None)
        # The path of one message, in order; a segment counts only where both of its ends are known.
        # (A run's started_at is set by run_submit in the same transaction when its session is free, so it
        # says nothing about the worker; the model request is the first sign of the worker.)
        path = [("inbound", inbound["at"]), ("run written", run.get("created")), ("model request", model_at),
                ("run finished", run.get("finished")), ("reply POST", reply_at)]
        for (a, at_a), (b, at_b) in zip(path, path[1:]):
            if at_a is not None and at_b is not None:
                segments[f"{a} -> {b}"].append(at_b - at_a)
        records.append([index, inbound["bot_id"], *[None if at is None else round((at - inbound["at"]) * 1000, 1)
                                                     for at in [calls[0] if calls else None, *(t for _, t in path[1:])]]])
        if not replies:
            lost.append(index)
            continue
        if len(replies) > 1:
            duplicated.append({"message": index, "replies": len(replies)})
        if replies[0]["content"] != expected_reply(index):
            wrong.append({"message": index, "content": replies[0]["content"][:200]})
        to_reply.append(reply_at - inbound["at"])
        if calls:
            to_typing.append(calls[0] - inbound["at"])
        else:
            typing_missing.append(index)
        if index in load["model_requests"]:
            to_model.append(load["model_requests"][index] - inbound["at"])
            model_to_reply.append(reply_at - load["model_requests"][index])
    # REST calls the bots made during the load that Discord refused, by method and route.
    errors = Counter()
    for request in outbound["requests"]:
        if request["status"] >= 400 and request["at"] >= load["window_start"] - 1:
            route = re.sub(r"/\d{5,}", "/{id}", request["path"])
            errors[f"{request['method']} {route} -> {request['status']}"] += 1
    lateness = [s["posted_at"] - s["due"] for s in sent.values()]
    # The same latency by thirds of the load: a backlog shows as a rise from one third to the next.
    thirds = []
    ordered = [r for r in records if r[-1] is not None]
    for part in range(3):
        chunk = ordered[part * len(ordered) // 3:(part + 1) * len(ordered) // 3]
        thirds.append(stats_ms([r[-1] / 1000 for r in chunk]))
    return {
        "messages": load["total"], "injected": len(sent), "inject_failures": load["failures"][:10],
        "replied": len(sent) - len(lost), "lost": len(lost), "lost_first": lost[:20],
        "duplicated": len(duplicated), "duplicated_first": duplicated[:20],
        "wrong_text": len(wrong), "wrong_text_first": wrong[:10],
        "unexpected_bot_messages": len(unexpected), "unexpected_first": unexpected[:10],
        "typing_missing": len(typing_missing), "typing_calls": len(outbound["typing"]),
        "rest_errors": dict(errors),
        "model_requests_seen": len(load["model_requests"]),
        "latency_ms": {
            "inbound_to_typing": stats_ms(to_typing),
            "inbound_to_model_request": stats_ms(to_model),
            "inbound_to_reply": stats_ms(to_reply),
            "model_request_to_reply": stats_ms(model_to_reply),
        },
        "segments_ms": {name: stats_ms(values) for name, values in segments.items()},
        "inbound_to_reply_by_third_ms": thirds,
        "generator_lateness_ms": stats_ms(lateness),
        "per_message_columns": ["index", "bot", "typing", "run written", "model request", "run finished",
                                "reply POST"],
        "per_message_ms": records,
    }


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------


def table(headers: list[str], rows: list[list]) -> str:
    """Plain aligned text: first column left-aligned, the rest right-aligned."""
    rows = [[("-" if c is None else str(c)) for c in row] for row in rows]
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]

    def line(cells):
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def pct(cpu_s: float, window: float) -> str:
    return f"{100 * cpu_s / window:.1f}%" if window else "-"


def minus(a, b):
    return None if a is None or b is None else f"{a - b:+.1f}"


def print_report(r: dict) -> None:
    cfg = r["config"]
    print()
    print(f"Discord bench: {cfg['accounts']} accounts in one run_discord, {cfg['rate_per_min']:g} DMs/min for "
          f"{cfg['duration_s']:g} s ({r['delivery']['messages']} messages), model ttft {cfg['ttft_ms']} ms, "
          f"worker -c {cfg['worker_concurrency']}, {cfg['tenants']} tenants; {r['machine']['cpus']} cores, "
          f"loadavg {r['loadavg']['before']} before / {r['loadavg']['after_load']} after the load")
    print()
    print("1. run_discord CPU and memory")
    idle, load = r["run_discord"]["idle"], r["run_discord"]["load"]
    rows = []
    for label, phase in ((f"idle, {cfg['accounts']} connected", idle), ("under load", load)):
        cpu_s = phase["cpu"]["cpu_s"]["run-discord"]
        window = phase["cpu"]["window_s"]
        rows.append([label, f"{window:.1f}", f"{cpu_s:.2f}", pct(cpu_s, window), phase["rss"]["start"],
                     phase["rss"]["mean"], phase["rss"]["max"], phase["threads"]])
    print(table(["phase", "window s", "CPU s", "% of a core", "RSS start MiB", "RSS mean", "RSS max", "threads"], rows))
    print(f"   RSS after start-up and a warm-up of one DM per bot: {r['run_discord']['rss_connected_mib']} MiB; "
          f"at the end (after the late accounts): {r['run_discord']['rss_end_mib']} MiB")
    print()
    print("   Everything else during the load window (CPU s / % of one core):")
    cpu = load["cpu"]
    names = ["run-discord", "worker", "fake-discord", "fake-llm", "redis", "postgres", "bench", "other"]
    print("   " + table(names, [[f"{cpu['cpu_s'].get(n, 0):.1f} / {pct(cpu['cpu_s'].get(n, 0), cpu['window_s'])}"
                                  for n in names]]).replace("\n", "\n   "))
    print(f"   the machine was {cpu['machine_cores_busy']:.2f} cores busy on average; 'other' is work outside this "
          "bench (other users' tests, Postgres background processes)")
    print()
    print("2. Connecting")
    c = r["connect"]
    rows = [
        ["from process start (fake gateway: connected)", c["start"]["fake"]["n"], c["start"]["fake"]["min"],
         c["start"]["fake"]["p50"], c["start"]["fake"]["p90"], c["start"]["fake"]["max"]],
        ["from process start (DB status=connected)", c["start"]["db"]["n"], c["start"]["db"]["min"],
         c["start"]["db"]["p50"], c["start"]["db"]["p90"], c["start"]["db"]["max"]],
        ["from creation while running (fake gateway)", c["late"]["fake"]["n"], c["late"]["fake"]["min"],
         c["late"]["fake"]["p50"], c["late"]["fake"]["p90"], c["late"]["fake"]["max"]],
        ["from creation while running (DB status)", c["late"]["db"]["n"], c["late"]["db"]["min"],
         c["late"]["db"]["p50"], c["late"]["db"]["p90"], c["late"]["db"]["max"]],
    ]
    print(table(["seconds", "accounts", "first", "p50", "p90", "all (max)"], rows))
    g = c["gateway_at_end"]
    print(f"   gateway sessions at the end: {g['connected']} connected, {g['identifies']} IDENTIFYs and "
          f"{g['resumes']} RESUMEs in all (one IDENTIFY per account and no RESUME: no reconnection)")
    print(f"   {c['start']['connected']}/{cfg['accounts']} connected at start-up "
          f"(statuses {c['start']['statuses']}); {c['late']['connected']}/{cfg['late_accounts']} late accounts "
          f"(statuses {c['late']['statuses']}); reload interval {cfg['reload_seconds']:g} s")
    print()
    print("3. Latency in ms, from the moment the fake Discord dispatched the DM (its timestamp)")
    lat = r["delivery"]["latency_ms"]
    model = r["model"]
    idle_ttft, load_ttft, load_total = model["direct_idle_ttft_ms"], model["direct_load_ttft_ms"], model["direct_load_total_ms"]
    rows = [
        [f"model's own TTFT, direct SDK, idle (set: {cfg['ttft_ms']})", idle_ttft["n"], idle_ttft["p50"], idle_ttft["p99"], idle_ttft["max"], "", ""],
        ["model's own TTFT, direct SDK, during the load", load_ttft["n"], load_ttft["p50"], load_ttft["p99"], load_ttft["max"], "", ""],
        ["model's own total, direct SDK, during the load", load_total["n"], load_total["p50"], load_total["p99"], load_total["max"], "", ""],
    ]
    for key, label in (("inbound_to_typing", "inbound -> typing POST (first outbound call)"),
                       ("inbound_to_model_request", "inbound -> model request reaches the fake"),
                       ("inbound_to_reply", "inbound -> reply POST"),
                       ("model_request_to_reply", "model request -> reply POST")):
        s = lat[key]
        rows.append([label, s["n"], s["p50"], s["p99"], s["max"], minus(s["p50"], load_ttft["p50"]),
                     minus(s["p99"], load_ttft["p99"])])
    print(table(["", "n", "p50", "p99", "max", "- model TTFT p50", "- model TTFT p99"], rows))
    print("   typing/reply: the fake's clock when the call reached it; model request: when it reached the fake model")
    print("   '- model TTFT' = the row minus the model's own TTFT during the load, percentile by percentile: "
          "what the gateway added (the reply is posted when the whole answer is in; here the answer ends "
          "right after its first token)")
    print()
    print("   Where the time of inbound -> reply POST goes, per message (run times from the bench database):")
    rows = [[name, s["n"], s["p50"], s["p90"], s["p99"], s["max"]] for name, s in r["delivery"]["segments_ms"].items()]
    print("   " + table(["segment", "n", "p50", "p90", "p99", "max"], rows).replace("\n", "\n   "))
    thirds = r["delivery"]["inbound_to_reply_by_third_ms"]
    print("   inbound -> reply POST p50 by third of the load: "
          + " / ".join(f"{t['p50']}" for t in thirds) + " ms (a rise means a growing backlog)")
    print()
    d = r["delivery"]
    print("4. Delivery")
    rows = [[d["messages"], d["injected"], d["replied"], d["lost"], d["duplicated"], d["wrong_text"],
             d["unexpected_bot_messages"], d["typing_missing"], r["load_drain_s"]]]
    print(table(["messages", "injected", "replied", "lost", "duplicated", "wrong text", "unexpected",
                 "no typing", "drain s"], rows))
    print(f"   ChannelReply statuses: {d['channel_replies']}; runs: {d['runs']}")
    print(f"   Discord REST calls refused during the load: {d['rest_errors'] or 'none'}")
    g = d["generator_lateness_ms"]
    print(f"   load generator: messages posted p50 {g['p50']} / p99 {g['p99']} / max {g['max']} ms after their due "
          f"time; inject failures: {len(d['inject_failures'])}")
    if d["lost_first"]:
        print(f"   first lost messages: {d['lost_first']}")
    if d["duplicated_first"]:
        print(f"   first duplicated: {d['duplicated_first']}")
    if d["wrong_text_first"]:
        print(f"   first wrong texts: {d['wrong_text_first'][:3]}")
    print()
    print("5. Logs (lines with WARNING/ERROR/Traceback)")
    for name, found in r["logs"].items():
        print(f"   {name}: {found['count']}")
        for line in found["excerpt"][:8]:
            print(f"      {line}")
    targets = r["verdict"]
    print()
    print(f"Verdict: {'every message got exactly one reply' if targets['exactly_one_reply'] else 'LOST OR DUPLICATED REPLIES'}; "
          f"{'every account connected' if targets['all_connected'] else 'NOT EVERY ACCOUNT CONNECTED'}; "
          f"{'no warnings or errors in run_discord' if targets['run_discord_log_clean'] else 'WARNINGS/ERRORS IN run_discord LOG'}")


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accounts", type=int, default=100, help="bot accounts hosted by run_discord (default 100)")
    parser.add_argument("--tenants", type=int, default=10, help="tenants the accounts are spread over (default 10)")
    parser.add_argument("--rate", type=float, default=1000, help="inbound DMs a minute over all bots (default 1000)")
    parser.add_argument("--duration", type=float, default=60, help="seconds of load (default 60)")
    parser.add_argument("--quick", action="store_true", help="20 s of load, 10 s idle, 3 late accounts, 20 direct calls")
    parser.add_argument("--idle", type=float, default=20, help="seconds of the idle measurement (default 20)")
    parser.add_argument("--ttft-ms", type=int, default=200, help="the fake model's time to first token (default 200)")
    parser.add_argument("--late-accounts", type=int, default=5,
                        help="accounts created while run_discord runs, after the load (default 5)")
    parser.add_argument("--worker-concurrency", type=int, default=50)
    parser.add_argument("--direct", type=int, default=50, help="direct SDK calls to the fake model at idle (default 50)")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.idle, args.late_accounts, args.direct = 20, 10, 3, 20
    return args


def exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)  # unwinds through the finally that stops the children


def main() -> int:
    args = parse_args()
    began = time.monotonic()
    log_dir = Path(tempfile.mkdtemp(prefix="beamclaw-discord-bench-"))
    print(f"logs: {log_dir}", flush=True)
    env = dict(os.environ)
    print(f"preparing {DATABASE_URL} and {REDIS_URL} ...", flush=True)
    prepare_state(env)
    import django

    django.setup()
    from django.conf import settings
    from django.db import connection

    from channels_app.models import ChannelReply
    from sessions.models import Run

    children: list[Process] = []
    meter = None
    results: dict = {}
    try:
        print("starting the fake Discord and the fake model ...", flush=True)
        discord_url = start_listening("fake-discord", "tests.fakes.discord_server", env, log_dir, children)
        llm_url = start_listening("fake-llm", "tests.fakes.anthropic_server", env, log_dir, children)
        service_env = dict(
            env, ANTHROPIC_BASE_URL=llm_url, ANTHROPIC_API_KEY="x", PYTHONUNBUFFERED="1",
            DISCORD_API_BASE_URL=f"{discord_url}/api/v10",
            DISCORD_GATEWAY_URL=f"{discord_url.replace('http', 'ws', 1)}/gateway/",
        )
        fake = FakeDiscord(discord_url)
        total_bots = args.accounts + args.late_accounts
        print(f"registering {total_bots} bots, creating {args.tenants} tenants and {args.accounts} accounts ...", flush=True)
        bots = [fake.bot(i) for i in range(total_bots)]
        bundles = create_tenants(args.tenants)
        accounts_now = [create_account(bundles[i % args.tenants], bots[i], i) for i in range(args.accounts)]
        connection.close()  # nothing of the bench's own must hold Postgres while it measures

        print("starting the worker ...", flush=True)
        worker_argv = [sys.executable, "manage.py", "worker", "-c", str(args.worker_concurrency),
                       "-n", "discord-bench@%h", "-l", "WARNING"]
        children.append(Process("worker", worker_argv, service_env, log_dir).start())
        wait_ready(lambda: redis.Redis.from_url(REDIS_URL).keys("bc:worker:*"), what="the worker",
                   processes=children, timeout=STARTUP_TIMEOUT)

        print(f"starting run_discord with {args.accounts} accounts ...", flush=True)
        process_start = time.time()
        run_discord = Process("run-discord", [sys.executable, "manage.py", "run_discord"], service_env, log_dir).start()
        children.append(run_discord)
        seen = wait_connected(fake, [b["id"] for b in bots[:args.accounts]], process_start, children, CONNECT_TIMEOUT)
        db_times, db_statuses = db_connected_times({a.pk: process_start for a in accounts_now}, 30.0)
        print(f"  {len(seen)}/{args.accounts} connected after {max(seen.values(), default=0):.1f} s", flush=True)
        connect_start = {"fake": stats_s(list(seen.values())), "db": stats_s(db_times), "connected": len(seen),
                         "statuses": dict(db_statuses)}

        meter = CpuMeter(children)
        print("warming up: one DM per bot, every reply awaited ...", flush=True)
        warmup_ids = warm_up(fake, bots[:args.accounts], args.rate, args.ttft_ms, children)
        time.sleep(3.0)  # let the warm-up's last typing loops and deliveries settle
        rss_connected = round(rss_mib(run_discord.pid), 1)
        print(f"measuring run_discord idle for {args.idle:g} s ...", flush=True)
        idle_rss = RssSampler(run_discord.pid)
        before = meter.snapshot()
        deadline = time.monotonic() + args.idle
        while time.monotonic() < deadline:
            idle_rss.sample()
            for child in children:
                child.ensure_alive()
            time.sleep(0.5)
        idle = {"cpu": CpuMeter.used(before, meter.snapshot()), "rss": idle_rss.summary(),
                "threads": thread_count(run_discord.pid)}

        print(f"measuring the model directly ({args.direct} sequential calls) ...", flush=True)
        direct_prompt = f"direct [[ttft_ms={args.ttft_ms}]]"
        idle_ttfts, idle_totals = asyncio.run(direct_batch(llm_url, direct_prompt, args.direct))

        loadavg_before = loadavg()
        print(f"load: {args.rate:g} DMs/min for {args.duration:g} s over {args.accounts} bots ...", flush=True)
        load = asyncio.run(run_load(
            fake_url=discord_url, llm_url=llm_url, bots=bots[:args.accounts], rate_per_min=args.rate,
            duration=args.duration, ttft_ms=args.ttft_ms, children=children, run_discord=run_discord, meter=meter,
        ))
        loadavg_after = loadavg()
        load_threads = thread_count(run_discord.pid)
        delivery = analyse(load, run_times(load["sent"]), warmup_ids)
        delivery["channel_replies"] = dict(Counter(ChannelReply.objects.values_list("status", flat=True)))
        delivery["runs"] = dict(Counter(Run.objects.values_list("status", flat=True)))
        connection.close()
        print(f"  {delivery['replied']}/{delivery['messages']} replied, {delivery['duplicated']} duplicated", flush=True)

        print(f"creating {args.late_accounts} accounts while run_discord runs ...", flush=True)
        # One at a time, spaced so that the creations fall at different points of the reload cycle.
        spacing = settings.DISCORD_RELOAD_SECONDS / max(1, args.late_accounts) + 0.37
        late_since, late_db_since = {}, {}
        for n, i in enumerate(range(args.accounts, total_bots)):
            if n:
                time.sleep(spacing)
            account = create_account(bundles[i % args.tenants], bots[i], i)
            late_since[bots[i]["id"]] = late_db_since[account.pk] = time.time()
        connection.close()
        late_seen = {}
        if late_since:
            first_created = min(late_since.values())
            raw = wait_connected(fake, list(late_since), first_created, children, 60.0)
            late_seen = {bot_id: seconds + first_created - late_since[bot_id] for bot_id, seconds in raw.items()}
        late_db, late_statuses = db_connected_times(late_db_since, 30.0)
        gateway_sessions = fake.http.get("/connections").raise_for_status().json()
        rss_end = round(rss_mib(run_discord.pid), 1)

        results = {
            "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
            "config": {"accounts": args.accounts, "tenants": args.tenants, "rate_per_min": args.rate,
                       "duration_s": args.duration, "idle_s": args.idle, "ttft_ms": args.ttft_ms,
                       "late_accounts": args.late_accounts, "worker_concurrency": args.worker_concurrency,
                       "reload_seconds": settings.DISCORD_RELOAD_SECONDS, "quick": args.quick},
            "loadavg": {"before": loadavg_before, "after_load": loadavg_after},
            "run_discord": {
                "rss_connected_mib": rss_connected, "rss_end_mib": rss_end, "idle": idle,
                "load": {"cpu": load["cpu"], "rss": load["rss"], "threads": load_threads},
            },
            "connect": {
                "start": connect_start,
                "late": {"fake": stats_s(list(late_seen.values())), "db": stats_s(late_db),
                         "connected": len(late_seen), "statuses": dict(late_statuses)},
                "gateway_at_end": {
                    "connected": sum(c["connected"] for c in gateway_sessions.values()),
                    "identifies": sum(c["identifies"] for c in gateway_sessions.values()),
                    "resumes": sum(c["resumes"] for c in gateway_sessions.values()),
                },
            },
            "model": {
                "direct_idle_ttft_ms": stats_ms(idle_ttfts), "direct_idle_total_ms": stats_ms(idle_totals),
                "direct_load_ttft_ms": stats_ms([p[0] for p in load["probes"]]),
                "direct_load_total_ms": stats_ms([p[1] for p in load["probes"]]),
            },
            "delivery": delivery,
            "load_drain_s": load["drain_s"],
            "log_dir": str(log_dir),
        }
    finally:
        if meter is not None:
            meter.close()
        for child in reversed(children):  # run_discord and the worker first, the fakes last
            child.stop()

    results["logs"] = {name: log_findings(log_dir / f"{name}.log")
                       for name in ("run-discord", "worker", "fake-discord", "fake-llm")}
    d = results["delivery"]
    results["verdict"] = {
        "exactly_one_reply": d["lost"] == 0 and d["duplicated"] == 0 and d["injected"] == d["messages"],
        "all_connected": results["connect"]["start"]["connected"] == args.accounts
        and results["connect"]["late"]["connected"] == args.late_accounts,
        "run_discord_log_clean": results["logs"]["run-discord"]["count"] == 0,
    }
    print_report(results)
    # Every message's timings stay with the logs; the committed figures are the summary.
    per_message = {k: d.pop(k) for k in ("per_message_columns", "per_message_ms")}
    (log_dir / "per-message.json").write_text(json.dumps(per_message) + "\n")
    RESULTS_PATH.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_PATH.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nresults: {RESULTS_PATH.relative_to(ROOT)}   logs: {log_dir}   took {time.monotonic() - began:.0f} s")
    return 0 if all(results["verdict"].values()) else 1


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted; every process the benchmark started was stopped", file=sys.stderr)
        sys.exit(130)
