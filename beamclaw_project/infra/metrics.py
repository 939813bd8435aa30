"""The gateway's Prometheus metrics, recorded by every process and read by `GET /metrics` (docs/metrics.md).

Invariants, and why:
- Multi-process: web, workers and the Discord process each write their samples to files of their own in
  PROMETHEUS_MULTIPROC_DIR (settings default it under .run/metrics), and the web's scrape adds them up
  (prometheus_client's multiprocess mode). A process's files are named after its host and pid, not the pid
  alone: containers sharing one volume all run their program as pid 1, and two processes writing one file
  would corrupt each other's counts.
- Recording is cheap: an increment under a lock, written to a memory-mapped file. No Redis or Postgres
  round trip, so the engine may record per run and per step. Nothing is recorded per text delta.
- Labels are bounded: tenant slug, registered tool name, channel kind, run or call status. Never a run,
  session or call id, never a name a model or a client made up (that would be a new series each time).
- Every metric is labelled: a labelled metric writes nothing until its first use, so processes that record
  nothing (most management commands) leave no files behind.
- Only counters and histograms live in the files. Gauges that describe the present (queue depths, pending
  approvals) are read at scrape time (beamclaw_project/metrics.py), so a dead process leaves no stale gauge
  and nothing needs `multiprocess.mark_process_dead`; a dead process's counts stay, as a counter's must.
"""

import os
import socket

from prometheus_client import Counter, Histogram, values

PREFIX = "beamclaw_"
# A tool name the registry does not know (a model's invention, a client's own tool) is counted under this.
OTHER_TOOL = "(other)"

_HOST = socket.gethostname().replace("_", "-")  # prometheus_client splits file names on '_'


def _process_id() -> str:
    # Called on every increment (prometheus_client notices a fork by a change of this value): keep it cheap.
    return f"{_HOST}-{os.getpid()}"


if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    values.ValueClass = values.MultiProcessValue(process_identifier=_process_id)

RUNS_STARTED = Counter(
    f"{PREFIX}runs_started", "Runs that started (went from queued to running).", ["tenant"], registry=None
)
RUNS_FINISHED = Counter(
    f"{PREFIX}runs_finished",
    "Runs that reached a terminal status (succeeded, failed, aborted); runs that never started count too "
    "(aborted while queued, merged into another run).",
    ["tenant", "status"], registry=None,
)
FIRST_TOKEN_SECONDS = Histogram(
    f"{PREFIX}run_first_token_seconds",
    "From a run's start to the first text its first step streamed (queue wait, context and model latency).",
    ["tenant"], buckets=(0.1, 0.25, 0.5, 1, 2, 3, 5, 8, 13, 20, 30, 60, 120), registry=None,
)
STEP_SECONDS = Histogram(
    f"{PREFIX}run_step_seconds",
    "One step of a run on a worker: context, compaction and the model call with its streaming.",
    ["tenant"], buckets=(0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600), registry=None,
)
TOKENS = Counter(
    f"{PREFIX}tokens", "Model tokens used (steps and compaction), by type: input or output.", ["tenant", "type"],
    registry=None,
)
TOOL_CALLS = Counter(
    f"{PREFIX}tool_calls",
    "Tool calls that settled (the model's and POST /api/tools/invoke's), by tool and status "
    "(succeeded, failed, denied). Tools the registry does not know are counted as '(other)'.",
    ["tool", "status"], registry=None,
)
CRON_LAG_SECONDS = Histogram(
    f"{PREFIX}cron_lag_seconds",
    "How late a cron occurrence started: its start minus its due time.",
    ["tenant"], buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300), registry=None,
)
CHANNEL_MESSAGES = Counter(
    f"{PREFIX}channel_messages",
    "Chat platform messages: received (in, each platform message once) and sent (out, delivered).",
    ["kind", "direction"], registry=None,
)


def run_started_record(*, tenant: str) -> None:
    RUNS_STARTED.labels(tenant).inc()


def run_finished_record(*, tenant: str, status: str) -> None:
    RUNS_FINISHED.labels(tenant, status).inc()


def first_token_observe(*, tenant: str, seconds: float) -> None:
    FIRST_TOKEN_SECONDS.labels(tenant).observe(max(seconds, 0.0))


def step_duration_observe(*, tenant: str, seconds: float) -> None:
    STEP_SECONDS.labels(tenant).observe(seconds)


def tokens_record(*, tenant: str, input_tokens: int, output_tokens: int) -> None:
    TOKENS.labels(tenant, "input").inc(input_tokens)
    TOKENS.labels(tenant, "output").inc(output_tokens)


def tool_call_record(*, tool: str, status: str, known_tools) -> None:
    """`known_tools`: the registry's names (a container), which bound the label's values."""
    TOOL_CALLS.labels(tool if tool in known_tools else OTHER_TOOL, status).inc()


def cron_lag_observe(*, tenant: str, seconds: float) -> None:
    # beat may wake an occurrence a moment early (cron/services.py: EARLY_TOLERANCE): that is no lag.
    CRON_LAG_SECONDS.labels(tenant).observe(max(seconds, 0.0))


def channel_message_record(*, kind: str, direction: str) -> None:
    CHANNEL_MESSAGES.labels(kind, direction).inc()
