"""A session's runs from queued to terminal: starting the next one, ending one, aborting.

Invariants: one active run per session (runs wait as `queued` and start in order, always under the
session's row lock); a run's user message enters the transcript when the run starts; a tenant never has
more than `max_concurrent_runs` active (counted under the tenant row lock, taken after the session's).
"""

import logging
from contextlib import contextmanager
from functools import cache, partial

from django.db import DatabaseError, connections, transaction
from django.utils import timezone

from beamclaw_project.infra.leases import Lease
from beamclaw_project.infra.log_context import log_context_bind
from beamclaw_project.infra.metrics import run_finished_record, run_started_record
from beamclaw_project.infra.redis import Command, redis_client, redis_scripts_call
from beamclaw_project.infra.rows import Columns, rows_write, rows_write_at_commit, select_all, select_together
from sessions import events
from sessions.models import AgentSession, Message, Run, ToolCall
from sessions.notify import session_subscribers_notify, session_subscribers_notify_if_any, session_watched_command
from sessions.runs.budget import record_tokens_call, record_tokens_counted
from sessions.runs.client_calls import (
    client_calls_of,
    client_calls_waiting_of,
    client_calls_waiting_statement,
    client_results_take_locked,
)
from sessions.runs.json_mode import reply_result_text
from sessions.runs.kernel import (
    abort_flag_set,
    first_step_reads,
    first_step_reads_carried,
    first_steps_commands,
    first_steps_send,
    run_mark_queued,
    run_mark_queued_call,
    run_start_lock_statement,
    runs_mark_queued,
    session_lock,
    session_lock_statement,
    session_of_lock_rows,
    transcript_append_at_commit,
    transcript_append_reading,
)
from sessions.runs.tool_calls import open_calls_settle_locked
from sessions.signals import run_finished
from tenants.models import Tenant
from tools.skills import tenant_uploads_revision_statement

logger = logging.getLogger(__name__)

RUN_FAILED_UNANSWERED = "its run failed before the model answered"

TERMINAL_EVENT = {
    Run.Status.SUCCEEDED: events.RUN_COMPLETED,
    Run.Status.FAILED: events.RUN_FAILED,
    Run.Status.ABORTED: events.RUN_ABORTED,
}


# --- starting ----------------------------------------------------------------------------------------


def tenant_has_capacity_locked(tenant_id) -> bool:
    """Whether the tenant may start another run. Locks the tenant row so that concurrent starts count
    each other (lock order everywhere: session, then tenant)."""
    return tenant_room_locked(tenant_id) > 0


def tenant_room_locked(tenant_id) -> int:
    """How many more runs the tenant may start now (may be negative after its cap was lowered); locks the
    tenant row like tenant_has_capacity_locked."""
    return room_of_tenant_rows(select_together(*tenant_room_statements(tenant_id)))


# Constants of the model, not input: safe to write into SQL.
_ACTIVE_SQL = ", ".join(f"'{status}'" for status in Run.ACTIVE_STATUSES)


def tenant_room_statements(tenant_id, *, lock: bool = True,
                           queued: bool = False) -> tuple[tuple[str, list], tuple[str, list]]:
    # Two statements, sent together: the count must come after the lock. Read in the locking statement
    # itself, it came from the snapshot taken before waiting for the row, so a start that waited for
    # another did not count the runs that one had just started (eight starts at once ran six against a cap
    # of two). Each statement here takes its own snapshot. The statuses are written into the statement, not
    # sent as a parameter: only then may the planner use the index of unfinished runs (a prepared statement's
    # generic plan cannot know that a parameter's statuses fall under an index's condition), whose size is
    # what runs now rather than every run the tenant ever had.
    # Without `lock`, only a first look: what has committed may already show the tenant over its cap.
    # `queued`: the runs that wait for room are counted too, apart (tenant_waiting_of): queued runs of sessions
    # with no active run (a run queued behind its own session's active run waits for that one, not for room).
    table = Run._meta.db_table
    if queued:
        queued_sql = f"'{Run.Status.QUEUED}'"
        count = (f"SELECT count(*) FILTER (WHERE r.status <> {queued_sql}), "
                 f"count(*) FILTER (WHERE r.status = {queued_sql} AND r.session_id NOT IN ("
                 f"SELECT a.session_id FROM {table} a WHERE a.tenant_id = %s AND a.status IN ({_ACTIVE_SQL}))) "
                 f"FROM {table} r WHERE r.tenant_id = %s AND r.status IN ({queued_sql}, {_ACTIVE_SQL})")
        count_params = [tenant_id, tenant_id]
    else:
        count = f"SELECT count(*) FROM {table} WHERE tenant_id = %s AND status IN ({_ACTIVE_SQL})"
        count_params = [tenant_id]
    return (
        (f"SELECT max_concurrent_runs FROM {Tenant._meta.db_table} WHERE id = %s{' FOR NO KEY UPDATE' if lock else ''}",
         [tenant_id]),
        (count, count_params),
    )


def room_of_tenant_rows(rows: list[list[tuple]]) -> int:
    """The room tenant_room_statements' rows give."""
    [(limit,)], [(active, *_)] = rows
    return limit - active


def tenant_waiting_of(rows: list[list[tuple]]) -> int:
    """How many runs of the tenant wait for room, by tenant_room_statements(queued=True)'s rows."""
    return rows[1][0][1]


def tenant_room_and_waiting_locked(tenant_id) -> tuple[int, int]:
    """The tenant's room (tenant_room_locked) and how many of its runs wait for room."""
    rows = select_together(*tenant_room_statements(tenant_id, queued=True))
    return room_of_tenant_rows(rows), tenant_waiting_of(rows)


class TenantAtCap(Exception):
    """A run that counted its tenant's room with its own writes or its commit (run_start_locked's
    `room_counted_with_writes`, `room_counted_at_commit`) found the tenant at its max_concurrent_runs, or runs
    of it waiting for room: its transaction (or the savepoint it runs in) must roll back, and the run be
    submitted again with run_submit's `room_counted_first`, which counts under the tenant's lock and starts
    or queues it."""


# The SQLSTATE beamclaw_tenant_room_check raises (migration agent_sessions 0007), and Postgres's for a
# function that does not exist.
_TENANT_AT_CAP_SQLSTATE = "BC429"
_UNDEFINED_FUNCTION_SQLSTATE = "42883"


def tenant_room_check_at_commit(tenant_id) -> None:
    """Lock the tenant's row and count its runs in the transaction's COMMIT: the commit fails, and the
    transaction rolls back, if this run took the tenant over its cap. Held from there, the lock is released
    by Postgres itself at the end of the commit: a start that locked it with its writes held it while this
    process sent the step and came back for the commit, which under load meant waiting for the interpreter
    lock twice, and every other start of the tenant waited behind it."""
    connections["default"].send_with_commit("SELECT beamclaw_tenant_room_check(%s)", [tenant_id])


@contextmanager
def tenant_at_cap_from_commit():
    """Around a transaction whose run start counted the tenant's room at its commit: the refused commit
    raised as TenantAtCap (Django has rolled the transaction back)."""
    try:
        yield
    except DatabaseError as exc:
        sqlstate = getattr(exc.__cause__, "sqlstate", None)
        if sqlstate == _TENANT_AT_CAP_SQLSTATE:
            raise TenantAtCap() from exc
        if sqlstate == _UNDEFINED_FUNCTION_SQLSTATE and "beamclaw_tenant_room_check" in str(exc):
            # Code newer than the database: the request is submitted again the way that needs no function.
            logger.error("The database lacks beamclaw_tenant_room_check: run `python manage.py migrate`.")
            raise TenantAtCap() from exc
        raise


# Set while runs of a tenant wait for room under its max_concurrent_runs: only then does a run's end look
# for other sessions' runs to start (tenant_fill_slots), a query that costs more than the rest of ending a
# run. A hint lost (Redis restarted, or set just after a run's end looked) only delays such a run until
# the reaper starts it (housekeeping.py).
CAPACITY_WAIT_HINT_SECONDS = 600


def _capacity_wait_key(tenant_id) -> str:
    return f"bc:tenant:{tenant_id}:capacity-wait"


def capacity_wait_note(tenant_id) -> None:
    redis_client().set(_capacity_wait_key(tenant_id), "1", ex=CAPACITY_WAIT_HINT_SECONDS)


@cache
def _pending_sql() -> tuple[Columns, str]:
    run = Columns(Run, "r")
    return run, f'SELECT {run.sql} FROM "{Run._meta.db_table}" r WHERE r.session_id = %s AND r.status = ANY(%s) ORDER BY r.created_at'


def pending_runs_statement(session_id) -> tuple[str, list]:
    """The session's queued and active runs, oldest first (a run's end may read them with its locks:
    run_end_locked's `pending_rows`)."""
    _, sql = _pending_sql()
    return sql, [session_id, [str(status) for status in (Run.Status.QUEUED, *Run.ACTIVE_STATUSES)]]


def pending_runs_of(pending_rows: list[tuple]) -> list[Run]:
    """The runs of pending_runs_statement's rows."""
    columns, _ = _pending_sql()
    return [columns.instance(row) for row in pending_rows]


def _next_to_start(pending_rows: list[tuple]) -> Run | None:
    """The session's oldest queued run, if none of its runs is active (pending_runs_statement's rows)."""
    pending = pending_runs_of(pending_rows)
    if not pending or any(r.status in Run.ACTIVE_STATUSES for r in pending):
        return None
    return pending[0]


def session_advance_locked(session: AgentSession, pending_rows: list[tuple] | None = None) -> Run | None:
    """Start the session's oldest queued run if none is active and the tenant has room for it.
    Caller holds the session row lock. `pending_rows`: the rows of pending_runs_statement, if the caller sent
    it with its own statements (a run's end)."""
    # Every run's end asks this, so it is written out (beamclaw_project/infra/rows.py).
    if pending_rows is None:
        pending_rows = select_all(*pending_runs_statement(session.pk))
    run = _next_to_start(pending_rows)
    if run is None:
        return None
    if not tenant_has_capacity_locked(session.tenant_id):
        capacity_wait_begin(session.tenant_id)
        return None
    return run_start_locked(session, run)


def session_advance(*, session_id) -> Run | None:
    with transaction.atomic():
        return session_advance_locked(session_lock(session_id))


def _session_advance_with_room(tenant_id, session_id) -> tuple[Run | None, int]:
    """session_advance for a session of the tenant that waited for room: the session's lock, its runs, its
    calls waiting for the client and the tenant's room (under the tenant's lock) read in one round trip.
    Returns the run started, or None (the session got a run going meanwhile, has none queued any longer or
    is gone, or the tenant has no room), and the room left."""
    with transaction.atomic():
        session_rows, pending_rows, waiting_calls_rows, *room_rows = select_together(
            session_lock_statement(session_id), pending_runs_statement(session_id),
            client_calls_waiting_statement(session_id), *tenant_room_statements(tenant_id),
        )
        if not session_rows:
            return None, room_of_tenant_rows(room_rows)  # (deleted meanwhile)
        session = session_of_lock_rows(session_rows, session_id)
        run, room = _next_to_start(pending_rows), room_of_tenant_rows(room_rows)
        if run is None or room <= 0:
            return None, room
        return run_start_locked(session, run, waiting_calls=client_calls_waiting_of(waiting_calls_rows)), room - 1


def run_start_locked(session: AgentSession, run: Run, *, session_is_new: bool = False,
                     room_counted_with_writes: bool = False, room_counted_at_commit: bool = False,
                     waiting_calls: list[ToolCall] | None = None, start_locked: bool = False) -> Run:
    """Put the run's user message in the transcript, mark it running and enqueue step 0: after commit, or before
    it with `session_is_new` or `start_locked`.
    Saves the run, whether it is new or was waiting. `session_is_new`: see run_submit.
    `room_counted_with_writes` (a new session's run): the tenant's room was not counted yet; it is counted
    in the round trip of the run's writes, after them (so counting this run), and TenantAtCap raised when
    the run would take the tenant over its cap, before anything is sent to Redis. With it,
    `room_counted_at_commit` (the caller's transaction is its own) moves the locked count into the commit,
    which fails if the run took the tenant over its cap (tenant_at_cap_from_commit turns that into
    TenantAtCap; step 0, sent by then, finds no run); the writes' round trip then counts without the lock, so
    only starts racing each other for the cap's last slots get as far as the commit. `waiting_calls`: the
    session's calls waiting for the client, if the caller read them (client_calls_waiting_statement).
    `start_locked` (a session that exists): the caller's transaction holds the run's start lock
    (kernel.run_start_lock_statement), so `run.started` and step 0 go out now, before the run's writes, and the
    step's way to a worker overlaps them and the commit; the session's subscribers are told after the commit."""
    run.status = Run.Status.RUNNING
    run.started_at = timezone.now()
    run.step = 0
    # A queued run's new status is saved with its message, in one round trip.
    updated_rows = () if run._state.adding else ((run, ("status", "started_at", "step")),)
    # Results for tool calls the client was handed go first, as the Messages API wants (client_calls.py).
    content = [*([] if session_is_new else client_results_take_locked(session, run, waiting_calls)), *run.input]
    if start_locked:
        run_started_send_before_commit(run, tenant_slug=session.tenant.slug, watched=True)
    # A new run is written with its message, and a new session not written yet with both (one round trip on
    # the way to the first token).
    new_rows = tuple(row for row in (session, run) if row._state.adding)
    # Nobody waits for a new session's runs or follows it: its step 0 goes out before the commit (kernel.py,
    # run_start_lock_statement), on the way to the first token.
    start_lock = (run_start_lock_statement(run.pk),) if session_is_new else ()
    # What else such a step 0 would read, it gets with its message (kernel.first_step_reads).
    uploads = (tenant_uploads_revision_statement(session.tenant_id),) if session_is_new and first_step_reads_carried(session) else ()
    room = ()
    if room_counted_with_writes:
        # (Counted at the commit, the room is also looked at here without the lock: a tenant that its
        # committed runs already show at its cap is refused before anything reaches Redis, as with the lock.
        # Runs waiting for room count as taking it: a slot that frees is theirs (a run's end starts the
        # oldest), and a start racing them for it would mostly be refused at the commit, after sending a
        # step 0 that finds no run.)
        room = tenant_room_statements(session.tenant_id, lock=not room_counted_at_commit, queued=True)
    user_message = dict(role=Message.Role.USER, content=content, run=run, new_rows=new_rows, updated_rows=updated_rows)
    if room_counted_at_commit:
        # The writes go with the COMMIT, then the locked count (which counts this run): step 0 leaves after a
        # round trip of reads only, the start's lock taken, and the writes and the commit are one round trip
        # that overlaps the step's way to the model. The first look does not count this run yet.
        rows, this_run_counted = select_together(*start_lock, *uploads, *room), False
    else:
        _, rows = transcript_append_reading(session, **user_message, also=(*start_lock, *uploads, *room))
        this_run_counted = True
    # (The tenant's row is locked after the writes, which take no lock on it: their foreign keys are
    # checked, with a share lock, only at commit, by which time this transaction holds the row itself.)
    if room:
        waiting = tenant_waiting_of(rows[-2:])
        if room_of_tenant_rows(rows[-2:]) + this_run_counted - waiting < 1:  # (no room left for this run)
            raise TenantAtCap()
        if waiting:
            # Room for them as well (a cap raised meanwhile): they need not wait for a run's end.
            tenant_fill_slots_on_commit(session.tenant_id)
    if room_counted_at_commit:
        transcript_append_at_commit(session, **user_message)
        tenant_room_check_at_commit(session.tenant_id)
    if session_is_new:
        reads = first_step_reads(session, run, content, rows[len(start_lock)][0]) if uploads else None
        run_started_send_before_commit(run, tenant_slug=session.tenant.slug, reads=reads)
    elif not start_locked:
        run_started_announce_on_commit(run, tenant_slug=session.tenant.slug)
    return run


def run_started_send_before_commit(run: Run, *, tenant_slug: str, reads: dict | None = None,
                                   watched: bool = False) -> None:
    """Start a run that its caller writes as running in its transaction, holding run_start_lock_statement's
    lock: mark it queued, publish run_started and send step 0 (with `reads`: kernel.first_step_reads) now, in
    one round trip; once the transaction commits, log and count it, and with `watched` (a session that may
    have subscribers) tell the session's subscribers. If it rolls back instead, the step finds no run, and the
    marker and the event lapse: nobody was told the run's id."""
    run_id, session_id, trigger = run.pk, run.session_id, run.trigger
    _runs_started_send([(run_id, session_id)], tenant_slug, watched=False, mark_queued=True,
                       reads={run_id: reads} if reads is not None else None)

    def started():
        _run_started_note(run_id, session_id, trigger, tenant_slug)
        if watched:
            # Asked after the commit, not with the step, as run_started_announce_on_commit does: no socket is told
            # of a run that a rollback undid. (Asked and sent without waiting: the submitter's answer does not
            # wait for other sockets.)
            session_subscribers_notify_if_any(session_id, run_id)

    transaction.on_commit(started)


def run_started_announce_on_commit(run: Run, *, tenant_slug: str) -> None:
    """The rest of starting a run whose row its caller has just written as running: mark it queued now, and
    once the transaction commits log it, count it, publish run_started, wake the session's subscribers
    and enqueue step 0."""
    run_id, session_id, trigger = run.pk, run.session_id, run.trigger
    # Marked before commit: from the moment the run is visibly `running`, the reaper must not take it
    # for an orphan (a rolled-back marker only lapses).
    run_mark_queued(run_id)

    def announce_and_enqueue():
        _run_started_note(run_id, session_id, trigger, tenant_slug)
        _runs_started_send([(run_id, session_id)], tenant_slug, watched=True)

    transaction.on_commit(announce_and_enqueue)


def runs_started_announce_on_commit(runs: list[Run], *, tenant_slug: str) -> None:
    """run_started_announce_on_commit for runs each started in a session made in the caller's transaction
    (runs_submit_isolated: cron's burst), with one Redis round trip for each of its steps rather than one
    per run: a burst's claims share the worker with the runs already going, and each round trip waits its
    turn for the interpreter again. A Redis failure after the commit stops the announcements of them all
    rather than of one run and the runs after it; either way their leases say queued, and the reaper sends
    the steps that were not sent."""
    run_ids = [run.pk for run in runs]
    if not run_ids:
        return
    runs_mark_queued(run_ids)
    started = [(run.pk, run.session_id, run.trigger) for run in runs]

    def announce_and_enqueue():
        for run_id, session_id, trigger in started:
            _run_started_note(run_id, session_id, trigger, tenant_slug)
        _runs_started_send([(run_id, session_id) for run_id, session_id, _ in started], tenant_slug, watched=False)

    transaction.on_commit(announce_and_enqueue)


def _runs_started_send(started: list[tuple], tenant_slug: str, *, watched: bool, mark_queued: bool = False,
                       reads: dict | None = None) -> None:
    """Publish run.started for each (run id, session id) and send its step 0, in one Redis round trip where
    the broker is the events' Redis database (on the way to the first token), in that order: a step's first
    event must follow its run.started. `watched`: ask whether sockets follow the sessions (sessions made in
    the runs' transaction have none) and tell them the runs started. `mark_queued`: first mark the runs
    queued (run_mark_queued), in the same round trip. `reads`: run id -> what its step 0 would read
    (kernel.first_step_reads)."""
    run_ids = [run_id for run_id, _ in started]
    steps = first_steps_commands(run_ids, tenant_slug, reads)
    marks = [run_mark_queued_call(run_id) for run_id in run_ids] if mark_queued else []
    publishes = [events.publish_command(run_id, events.RUN_STARTED, _run_started_payload(run_id, session_id))
                 for run_id, session_id in started]
    watches = [session_watched_command(session_id) for _, session_id in started] if watched else []
    results = redis_scripts_call([*marks, *publishes, *watches, *(steps or [])])[len(marks):]
    for (run_id, session_id), followed in zip(started, results[len(publishes):len(publishes) + len(watches)]):
        if followed:
            session_subscribers_notify(session_id, run_id)
    if steps is None:  # the broker is another Redis database
        first_steps_send(run_ids, tenant_slug, reads)


def _run_started_note(run_id, session_id, trigger: str, tenant_slug: str) -> None:
    # One log line and one count per run start and end (docs/metrics.md); whatever this process logs next
    # in this context is about this run too.
    log_context_bind(tenant=tenant_slug, session=session_id, run=run_id)
    logger.info("run started (%s)", trigger)
    run_started_record(tenant=tenant_slug)


def _run_started_payload(run_id, session_id) -> dict:
    return {"run_id": str(run_id), "session_id": str(session_id)}


@cache
def _waiting_sessions_sql() -> str:
    # The statuses are written into the statement, as in tenant_room_statements: the index of unfinished runs.
    table = Run._meta.db_table
    return (
        f'SELECT r.session_id FROM "{table}" r WHERE r.tenant_id = %s AND r.status = \'{Run.Status.QUEUED}\' '
        f'AND r.session_id NOT IN (SELECT a.session_id FROM "{table}" a WHERE a.tenant_id = %s AND a.status IN ({_ACTIVE_SQL})) '
        f'GROUP BY r.session_id ORDER BY min(r.created_at) LIMIT {WAITING_SESSIONS_LOOKED_AT}'
    )


# How many sessions waiting for room one look reads; a start that finds more room looks again.
WAITING_SESSIONS_LOOKED_AT = 50


def tenant_fill_slots(*, tenant_id) -> int:
    """Start queued runs of other sessions of the tenant while it has room, oldest first: after a run's end
    that found runs waiting (the capacity hint), or where a run's start found room for runs that wait.

    While runs wait, every run's end of the tenant comes here, so what finds no room must cost little: the
    room (a first look, without the tenant's lock) and the sessions waiting longest are read in one round trip,
    and nothing is locked when there is no room. Each start then locks its session and the tenant and counts
    again, in one round trip (_session_advance_with_room)."""
    started = 0
    while True:
        first_look = select_together(
            *tenant_room_statements(tenant_id, lock=False), (_waiting_sessions_sql(), [tenant_id, tenant_id])
        )
        room, waiting = room_of_tenant_rows(first_look[:2]), first_look[2]
        started_before = started
        for (session_id,) in waiting:
            if room <= 0:
                # Runs still wait: the hint that brings the next run's end here lives on (it expires).
                capacity_wait_note(tenant_id)
                return started
            run, room = _session_advance_with_room(tenant_id, session_id)
            started += run is not None
        # Another look only if this one was full and started something (sessions found busy stay listed).
        if room <= 0 or len(waiting) < WAITING_SESSIONS_LOOKED_AT or started == started_before:
            return started


def capacity_wait_begin(tenant_id) -> None:
    """A run of the tenant is written queued for lack of room, in the caller's transaction: set the hint
    that brings the runs' ends to it, and count the room again once the transaction commits. A run that
    ended between this transaction's count and its commit looked for waiting runs before this one could be
    seen; were it the last one running, no other end would come to start this one, and it would wait for
    the reaper. Counted after the commit, such an end has freed its slot, and this run takes it."""
    capacity_wait_note(tenant_id)
    transaction.on_commit(partial(_tenant_fill_slots_if_room, tenant_id), robust=True)


def _tenant_fill_slots_if_room(tenant_id) -> None:
    # The room alone first: at its cap (the usual case here) the tenant has none, and the waiting sessions'
    # query is left out.
    if room_of_tenant_rows(select_together(*tenant_room_statements(tenant_id, lock=False))) > 0:
        tenant_fill_slots(tenant_id=tenant_id)


def tenant_fill_slots_on_commit(tenant_id) -> None:
    """tenant_fill_slots once the caller's transaction commits. Robust: a failure there is logged, and the
    request whose transaction it is goes on (its own run is written by then)."""
    transaction.on_commit(partial(tenant_fill_slots, tenant_id=tenant_id), robust=True)


def steering_take_locked(session: AgentSession, run: Run) -> list[dict]:
    """At a step boundary of `run`: the content of messages sent in `steer` mode since, which join the
    run's next model call. Their own runs end here as succeeded, `merged_into` this run.
    Caller holds the session and run locks."""
    steering = list(
        Run.objects.filter(
            session=session, status=Run.Status.QUEUED, params__queue_mode=AgentSession.QueueMode.STEER
        ).order_by("created_at")
    )
    content: list[dict] = []
    for steer in steering:
        content.extend(steer.input)
        steer.params = {**steer.params, "merged_into": str(run.pk)}
        steer.save(update_fields=["params"])
        run_end_locked(
            steer, Run.Status.SUCCEEDED, session=session,
            payload={"run_id": str(steer.pk), "merged_into": str(run.pk), "text": "", "usage": steer.usage},
        )
    return content


# --- ending ------------------------------------------------------------------------------------------


def run_end_locked(run: Run, status: str, *, error: str = "", session: AgentSession, payload=None,
                   step_has_calls: bool = True, tokens_spent: int = 0, reply: Message | None = None,
                   session_fields: tuple[str, ...] = (), pending_rows: list[tuple] | None = None,
                   releasing: Lease | None = None, text_delta: dict | None = None) -> None:
    """Mark a run terminal, announce it after commit, and start the next queued run: the session's own
    now, other sessions' of the tenant after commit if this frees a slot they wait for.
    Caller holds the session and run row locks. `step_has_calls=False`: the caller knows the current step
    made no tool calls (its reply has no tool_use), so there are none to settle. `tokens_spent`: the last
    step's tokens, counted against the tenant's daily budget with the announcement (one round trip).
    `reply`: the last step's reply, not written yet (kernel.transcript_message), written with the run's end;
    `session_fields`: other fields of the session the caller changed, saved with it.
    `pending_rows`: pending_runs_statement's rows, read with the caller's locks (this run among them): when
    the session has no run to start next, the run's end is written with the commit, in its round trip, and
    nothing in the transaction may come after this call. `releasing`: the ending step's lease, given back in
    the announcement's round trip (after the commit; a rollback leaves it to the caller). `text_delta`: the
    last step's last text delta, not published yet: it goes first in that round trip."""
    if step_has_calls:
        open_calls_settle_locked(run, session, status)
    if status == Run.Status.FAILED and not run.messages.filter(role=Message.Role.ASSISTANT).exists():
        # Clients retry failed requests (the openai package twice by default): the model must see the
        # message once, from the retry, not once per attempt. The transcript keeps it, marked.
        run.messages.filter(role=Message.Role.USER).update(excluded_reason=RUN_FAILED_UNANSWERED)
    run.status = status
    run.error = error
    run.finished_at = timezone.now()
    updates = [(run, ("status", "error", "error_code", "finished_at", "input_tokens", "output_tokens"))]
    session_changed = [*session_fields, *(("next_seq",) if reply is not None else ())]
    event_payload = payload or {"run_id": str(run.pk), "error": error, "code": run.error_code, "usage": run.usage}
    run_id = run.pk
    tenant_id = run.tenant_id
    tenant_slug = session.tenant.slug
    trigger = run.trigger
    ephemeral = session.ephemeral

    def announce():
        log_context_bind(tenant=tenant_slug, session=session.pk, run=run_id)
        logger.info("run %s%s", status, f": {error}" if error else "")
        run_finished_record(tenant=tenant_slug, status=status)
        # With the event, whether runs of the tenant wait for a slot (one round trip): a start tried after
        # this run's commit finds the slot free by itself, so the hint is as good read now as later. The
        # tokens are counted first, so a client that saw the run end sees them spent.
        counted = [record_tokens_call(tenant_id=tenant_id, tokens=tokens_spent)] if tokens_spent > 0 else []
        delta = [events.publish_command(run_id, events.TEXT_DELTA, text_delta)] if text_delta is not None else []
        results = redis_scripts_call([
            *counted,
            *delta,
            events.publish_command(run_id, TERMINAL_EVENT[status], event_payload),
            Command("EXISTS", (_capacity_wait_key(tenant_id),)),
            *([releasing.release_call()] if releasing is not None else []),
        ])
        tokens_counted, runs_wait = results[:len(counted)], results[len(counted) + len(delta) + 1]
        for result in tokens_counted:
            record_tokens_counted(tenant_id=tenant_id, result=result)
        for receiver, result in run_finished.send_robust(
            sender=Run, run_id=run_id, status=status, trigger=trigger, session_ephemeral=ephemeral
        ):
            if isinstance(result, Exception):
                logger.error("run_finished receiver %s failed for run %s: %r", receiver, run_id, result)
        if runs_wait:
            tenant_fill_slots(tenant_id=tenant_id)

    transaction.on_commit(announce)
    if session.ephemeral and not (payload or {}).get("tool_calls"):
        # (A run that handed tool calls to the client leaves its session open for the client's results.)
        session.status = AgentSession.Status.CLOSED
        session_changed.append("status")
    if session_changed:
        updates.append((session, tuple(dict.fromkeys(("updated_at", *session_changed)))))
    inserts = [[reply]] if reply is not None else []
    if pending_rows is None:
        # The run's end, the session's, and what the session has waiting: one round trip.
        [pending_rows] = rows_write(updates=updates, inserts=inserts, reads=[pending_runs_statement(session.pk)])
    else:
        pending_rows = [row for row in pending_rows if _pending_sql()[0].instance(row).pk != run_id]
        if _next_to_start(pending_rows) is None:
            rows_write_at_commit(updates=updates, inserts=inserts)
            return
        rows_write(updates=updates, inserts=inserts)
    session_advance_locked(session, pending_rows)


def run_abort(*, run: Run, reason: str = "aborted by request") -> Run:
    """Abort a run. A queued run (or one waiting for an approval) ends here; a running one ends at its
    step's next stream event."""
    with transaction.atomic():
        session = session_lock(run.session_id)
        locked = Run.objects.select_for_update(no_key=True).get(pk=run.pk)
        run_abort_locked(locked, reason, session)
    return locked


def run_abort_locked(run: Run, reason: str, session: AgentSession) -> None:
    """A streaming step ends at its next stream event (the flag); a run that waits (queued, for an
    approval, or in its tool phase, where a deferred call may wait for hours) ends here, its open calls
    settled as not run to completion."""
    if run.is_terminal:
        return
    abort_flag_set(run.pk, reason)
    waiting = run.status in (Run.Status.QUEUED, Run.Status.AWAITING_APPROVAL)
    if waiting or run.tool_calls.filter(step=run.step).exists():
        run_end_locked(run, Run.Status.ABORTED, error=reason, session=session)


def terminal_event_from_db(run: Run) -> events.RunEvent | None:
    """The terminal event rebuilt from Postgres, for a run whose stream lost it (e.g. the worker died
    between commit and publish, or the stream expired)."""
    if not run.is_terminal:
        return None
    payload = {"run_id": str(run.pk), "error": run.error, "code": run.error_code, "usage": run.usage}
    if run.status == Run.Status.SUCCEEDED:
        reply = run.messages.filter(role=Message.Role.ASSISTANT).order_by("-seq").first()
        if reply is not None:
            payload.update(
                message={"seq": reply.seq, "role": reply.role, "content": reply.content},
                text=reply_result_text(run.params.get("response_format"), reply.content),
                step=reply.step,
            )
            client_calls = client_calls_of(run, reply.step)
            if client_calls:
                payload.update(tool_calls=client_calls, stop_reason="tool_use")
    return events.RunEvent(seq=0, event=TERMINAL_EVENT[run.status], payload=payload)
