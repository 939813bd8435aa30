"""The durable run engine (DESIGN §5): one package, and this is its public face.

A run is a chain of short, idempotent `sessions.run_step` tasks on its tenant's queue; Postgres holds
every bit of state, Redis only the live event stream and the leases.

    submit.py       a user turn becomes a run, following the session's queue mode
    lifecycle.py    a session's runs from queued to terminal: start the next, end one, abort
    step.py         one step: ask the provider, stream, then end the run or go to the tool phase
    tool_phase.py   a reply's tool calls, from the tool_use blocks to the next step
    tool_calls.py   tool results in the transcript; open calls of a run that ends
    client_calls.py calls of the client's own tools: handed out as the run ends, answered by its next turn
    housekeeping.py the reaper of steps whose worker died (tool calls: tool_phase.tool_calls_reap)
    budget.py       the tenant's daily token budget
    json_mode.py    response_format: the reply held to JSON (a schema), one repair, then a clear error
    compaction.py   summarizing older turns when the context nears the agent's budget (context.py: what
                    the model sees)
    kernel.py       run lock, transcript append, step enqueue, abort flag, run lease

Edges and services use only the names below. The model's tool calls run through the toolbox
(tools/runner.py), with this engine registered as their owner (sessions/apps.py).
"""

from sessions.runs.compaction import (
    COMPACT_TASK,
    compaction_outcome_await,
    compaction_outcome_wait,
    compaction_pending_message,
    compaction_request,
    compaction_run_requested,
)
from sessions.runs.delta_window import UNSTREAMED_PARAM
from sessions.runs.json_mode import response_format_parse
from sessions.runs.kernel import FIRST_STEP_READS_HEADER, transcript_seed_new
from sessions.runs.lifecycle import (
    RUN_FAILED_UNANSWERED,
    TenantAtCap,
    run_abort,
    tenant_at_cap_from_commit,
    terminal_event_from_db,
)
from sessions.runs.step import run_step
from sessions.runs.submit import (
    SessionClosed,
    SubmitReads,
    run_submit,
    runs_submit_isolated,
    submit_reads,
    tenant_recently_at_cap,
    transcript_seed,
    transcript_seed_if_empty_locked,
)

__all__ = [
    "COMPACT_TASK",
    "FIRST_STEP_READS_HEADER",
    "compaction_outcome_await",
    "compaction_outcome_wait",
    "compaction_pending_message",
    "compaction_request",
    "compaction_run_requested",
    "RUN_FAILED_UNANSWERED",
    "SessionClosed",
    "SubmitReads",
    "TenantAtCap",
    "tenant_at_cap_from_commit",
    "UNSTREAMED_PARAM",
    "response_format_parse",
    "run_abort",
    "run_step",
    "run_submit",
    "runs_submit_isolated",
    "submit_reads",
    "tenant_recently_at_cap",
    "terminal_event_from_db",
    "transcript_seed",
    "transcript_seed_if_empty_locked",
    "transcript_seed_new",
]
