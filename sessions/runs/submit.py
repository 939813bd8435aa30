"""Submitting a user turn: the run that will answer it, under the session's queue mode."""

import time
import uuid
from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone

from beamclaw_project.errors import Conflict
from beamclaw_project.infra.rows import rows_insert, select_together
from sessions.models import AgentSession, Message, Run, ToolCall
from sessions.runs.budget import check_token_budget
from sessions.runs.client_calls import (
    client_calls_waiting_of,
    client_calls_waiting_statement,
    client_results_check_locked,
)
from sessions.runs.delta_window import UNSTREAMED_PARAM
from sessions.runs.kernel import (
    run_start_lock_statement,
    session_lock_statement,
    session_of_lock_rows,
    transcript_seed_new,
    transcript_seeded_messages,
)
from sessions.runs.lifecycle import (
    capacity_wait_begin,
    pending_runs_of,
    pending_runs_statement,
    room_of_tenant_rows,
    run_abort_locked,
    run_end_locked,
    run_start_locked,
    runs_started_announce_on_commit,
    session_advance_locked,
    tenant_has_capacity_locked,
    tenant_room_and_waiting_locked,
    tenant_room_locked,
    tenant_room_statements,
)
from tenants.models import Agent, Tenant


class SessionClosed(Conflict):
    """The session no longer takes messages (an ephemeral session whose request is over)."""


@dataclass
class SubmitReads:
    """What run_submit decides by in a session that exists, read in one round trip (submit_reads)."""

    session: AgentSession  # locked, its tenant loaded
    pending: list[Run]  # its queued and active runs, oldest first
    waiting_calls: list[ToolCall]  # its calls waiting for the client's results, locked
    room: int  # how many more runs the tenant may start now, counted under the tenant's lock
    # The id of the run the submit may start. The transaction holds that run's start lock
    # (kernel.run_start_lock_statement), so its step 0 may go out before the commit and wait for it.
    run_id: uuid.UUID


def submit_reads(session_id, tenant_id) -> SubmitReads:
    """Lock the session and read what a submit to it decides by, in one round trip: its runs, its calls waiting
    for the client, the tenant's room (the tenant's row locked after the session's, the order of every lock
    here) and the start lock of the run it may start. Call inside the transaction that submits. Raises
    AgentSession.DoesNotExist."""
    run_id = uuid.uuid4()
    session_rows, pending_rows, waiting_rows, *room_rows, _ = select_together(
        session_lock_statement(session_id), pending_runs_statement(session_id),
        client_calls_waiting_statement(session_id), *tenant_room_statements(tenant_id),
        run_start_lock_statement(run_id),
    )
    return SubmitReads(
        session=session_of_lock_rows(session_rows, session_id), pending=pending_runs_of(pending_rows),
        waiting_calls=client_calls_waiting_of(waiting_rows), room=room_of_tenant_rows(room_rows), run_id=run_id,
    )


def run_submit(
    *,
    session: AgentSession,
    content: list[dict],
    trigger: str,
    params: dict | None = None,
    mode: str | None = None,
    tool_results: dict[str, dict] | None = None,
    session_is_new: bool = False,
    reads: SubmitReads | None = None,
    room_counted_first: bool = False,
    room_counted_at_commit: bool = False,
) -> Run:
    """Take a user turn for a session and return the run that will answer it.

    While a run of the session is active the message follows the queue mode (the session's unless `mode`
    overrides it): `followup` queues a run; `collect` folds it into the run already waiting, if any;
    `steer` queues a run that the active run absorbs at its next step boundary (else it runs next);
    `interrupt` aborts the active run and anything waiting, then runs this message.
    `tool_results` (tool_call_id -> tool_result block) answer the calls the session's last run handed to the
    client; they must answer exactly those (client_calls.py), and start the run's user message.
    Raises LimitExceeded when the tenant's daily token budget is used up, SessionClosed for a closed session.
    `session_is_new`: the caller created the session in its transaction, still open, so nobody else sees it
    yet: it needs no lock and has no runs and no calls waiting for results (three queries saved). Such a
    session may not be written yet (`_state.adding`): it is written with the run. Its run is started at once,
    the tenant's room counted in the round trip of the run's writes (one less on the way to the first
    token); where the tenant is at its cap, or runs of it wait for room, that raises TenantAtCap, and the
    caller rolls its transaction (or savepoint) back and submits again with `room_counted_first`, which
    counts under the tenant's lock first and starts the run or queues it (_new_session_run_start_or_queue_locked). With
    `room_counted_at_commit` (the caller's transaction is its own, committed right after this: no savepoint
    around it), the room is counted in the commit instead, and the caller's tenant_at_cap_from_commit raises
    TenantAtCap after the rollback.
    In a session that exists, the session is locked and what the submit decides by read in one round trip
    (submit_reads); a run that starts at once sends its `run.started` and step 0 before its writes, which the
    step waits for (run_start_locked's `start_locked`). `reads`: the caller read them (submit_reads) in its
    transaction, still open, and gives that transaction up on a refusal here: no savepoint.
    """
    check_token_budget(tenant=session.tenant)
    mode = mode or session.queue_mode
    # A caller that gives up its whole transaction on a refusal here needs no savepoint (each costs two
    # round trips).
    with transaction.atomic(savepoint=not (session_is_new or reads is not None)):
        if not session_is_new and reads is None:
            reads = submit_reads(session.pk, session.tenant_id)
        locked = session if session_is_new else reads.session
        if tool_results and locked.ephemeral and locked.status == AgentSession.Status.CLOSED:
            raise SessionClosed(f"Session {locked.key} is closed: its tool calls were answered already.")
        if locked.status == AgentSession.Status.CLOSED:
            raise SessionClosed(f"Session {locked.key} is closed.")
        if tool_results:
            client_results_check_locked(locked, tool_results, waiting=reads.waiting_calls if reads else None)
            params = {**(params or {}), "tool_results": tool_results}
        # Workers change a session's runs only under the session lock held here, so this read is current.
        pending = [] if session_is_new else reads.pending
        room, waiting_calls = (None, None) if session_is_new else (reads.room, reads.waiting_calls)
        active = next((r for r in pending if r.status in Run.ACTIVE_STATUSES), None)
        queued = [r for r in pending if r.status == Run.Status.QUEUED]
        if active is not None and mode == AgentSession.QueueMode.COLLECT:
            waiting = next(
                (r for r in reversed(queued) if r.params.get("queue_mode") == AgentSession.QueueMode.COLLECT), None
            )
            if waiting is not None:
                waiting.input = [*waiting.input, *content]
                fields = ["input"]
                if waiting.params.get(UNSTREAMED_PARAM) and not (params or {}).get(UNSTREAMED_PARAM):
                    # This submitter may stream the reply (it follows the run it joins): its deltas go as they come.
                    waiting.params = {k: v for k, v in waiting.params.items() if k != UNSTREAMED_PARAM}
                    fields.append("params")
                waiting.save(update_fields=fields)
                return waiting
        if active is not None and mode == AgentSession.QueueMode.INTERRUPT:
            for superseded in queued:
                run_end_locked(superseded, Run.Status.ABORTED, error="superseded by a newer message", session=locked)
            queued = []
            run_abort_locked(active, "interrupted by a newer message", locked)
            # (Its end may have settled calls and freed a slot of the tenant's: read again below.)
            room, waiting_calls = None, None
            if active.is_terminal:
                active = None
        run = Run(
            **({} if session_is_new else {"id": reads.run_id}),
            tenant_id=locked.tenant_id,
            session=locked,
            input=content,
            trigger=trigger,
            params={**(params or {}), "queue_mode": mode},
        )
        if session_is_new:
            if not room_counted_first:
                return run_start_locked(locked, run, session_is_new=True, room_counted_with_writes=True,
                                        room_counted_at_commit=room_counted_at_commit)
            return _new_session_run_start_or_queue_locked(locked, run)
        if active is None and not queued and (room > 0 if room is not None else tenant_has_capacity_locked(locked.tenant_id)):
            # The common case: straight to running.
            run_start_locked(locked, run, waiting_calls=waiting_calls, start_locked=True)
            return run
        run.save()
        if active is None:
            started = session_advance_locked(locked)
            if started is not None and started.pk == run.pk:
                return started
    return run


def _new_session_run_start_or_queue_locked(session: AgentSession, run: Run) -> Run:
    """The run of a new session (run_submit's `session_is_new`) that was refused room at its first try
    (`room_counted_first`): the tenant's runs counted again, under its lock, start it now if the tenant has
    room and no run waits for it; else it waits, queued, written with its session in one round trip.
    Waiting runs come first: where the tenant has room and yet runs wait (a slot that just freed, before the
    run's end that freed it started them; a cap raised meanwhile), this run queues behind them, and the
    oldest start once it is written."""
    room, waiting = tenant_room_and_waiting_locked(session.tenant_id)
    if room > 0 and not waiting:
        return run_start_locked(session, run, session_is_new=True)
    rows_insert(*(([session], transcript_seeded_messages(session), [run]) if session._state.adding else ([run],)))
    tenant_at_cap_note(session.tenant_id)
    # (With room, the oldest waiting runs start once this commits: capacity_wait_begin counts it again.)
    capacity_wait_begin(session.tenant_id)
    return run


# When this process last saw each tenant at its max_concurrent_runs (time.monotonic()). While a tenant's runs
# wait for room, a new session's run that first tries to start at once (counting the room with its writes and
# in its commit) is refused and written again, queued: a second transaction, and a rollback, which also makes
# the connection prepare its statements again. A run submitted within TENANT_AT_CAP_MEMORY_SECONDS of the
# last one that the count under the tenant's lock queued (no room, or runs waiting for it) goes the queuing
# way first, which still starts it at once when the tenant has room and nobody waits. (Not forgotten at such
# a start: at its cap, a tenant has room only for a moment now and then.)
# Memory of one process only: nothing to share, and one entry per tenant.
TENANT_AT_CAP_MEMORY_SECONDS = 1.0
_tenants_at_cap: dict[int, float] = {}


def tenant_recently_at_cap(tenant_id) -> bool:
    """Whether a run of the tenant submitted here lately had to wait for room (tenant_at_cap_note)."""
    seen = _tenants_at_cap.get(tenant_id)
    return seen is not None and time.monotonic() - seen < TENANT_AT_CAP_MEMORY_SECONDS


def tenant_at_cap_note(tenant_id) -> None:
    """Remember that a run just submitted here for the tenant waits for room."""
    _tenants_at_cap[tenant_id] = time.monotonic()


def runs_submit_isolated(*, tenant: Tenant, turns: list[tuple[Agent, str, list[dict]]], trigger: str,
                         params: dict | None = None) -> list[Run]:
    """One run in each of len(turns) new ephemeral sessions (agent, session key, content), all in one
    transaction: what run_submit does for a turn in a new session, in a handful of statements for the whole
    batch (cron's burst, where a minute's many occurrences each get a session of their own). Runs past
    the tenant's room wait queued, as run_submit's would. `params`: every run's. Raises LimitExceeded when the
    tenant's daily token budget is used up."""
    check_token_budget(tenant=tenant)
    # (No savepoint: a caller's transaction cannot go on from a failure here, and sending one is a round trip.)
    with transaction.atomic(savepoint=False):
        # New sessions are seen by nobody before commit, so only the tenant row is locked (for the count).
        room = max(0, tenant_room_locked(tenant.pk))
        starting = min(room, len(turns))
        sessions = [
            AgentSession(tenant=tenant, agent=agent, key=key, ephemeral=True, next_seq=2 if i < starting else 1)
            for i, (agent, key, _) in enumerate(turns)
        ]
        now = timezone.now()
        runs = [
            Run(tenant=tenant, session=session, input=content, trigger=trigger,
                params={**(params or {}), "queue_mode": session.queue_mode},
                **({"status": Run.Status.RUNNING, "started_at": now, "step": 0} if i < starting else {}))
            for i, (session, (_, _, content)) in enumerate(zip(sessions, turns))
        ]
        messages = [
            Message(session=run.session, seq=1, role=Message.Role.USER, content=run.input, run=run) for run in runs[:starting]
        ]
        rows_insert(sessions, runs, messages)  # in one round trip
        runs_started_announce_on_commit(runs[:starting], tenant_slug=tenant.slug)
        if starting < len(runs):
            capacity_wait_begin(tenant.pk)
    return runs


def transcript_seed_if_empty_locked(session: AgentSession, turns: list[tuple[str, list[dict]]]) -> bool:
    """Start an empty transcript with `turns` (role, blocks) — a client's history for a new session. Returns
    whether the transcript was empty (and so is now `turns`); an existing transcript is left alone. The
    caller holds the session's lock (session_lock)."""
    if session.next_seq != 1:
        return False
    transcript_seed(session, turns)
    return True


def transcript_seed(session: AgentSession, turns: list[tuple[str, list[dict]]]) -> None:
    """Write `turns` (role, blocks) as the start of the session's empty transcript. The caller holds the
    session's lock, or created it in its still-open transaction."""
    if turns:
        # Seeded as a session not written yet is (next_seq, and the turns kept on the instance for
        # kernel.first_step_reads), then written at once.
        transcript_seed_new(session, turns)
        Message.objects.bulk_create(transcript_seeded_messages(session))
        session.save(update_fields=["next_seq", "updated_at"])
