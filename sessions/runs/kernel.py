"""The run engine's kernel: the few primitives every part of the engine (and nothing outside it) uses.

- `run_lock`: lock a run's session, then the run. The one lock order used everywhere: session, run,
  tool call (or invocation), approval, then the agent (an "allow always" decision) or the tenant (its
  run capacity). Nothing that holds a later lock takes an earlier one; tools/invoke's in-flight cap
  takes the tenant row before it creates the invocation, holding nothing else.
- `transcript_append`: the only way a message enters a session's transcript (gap-free `seq` from the
  session row, which the caller has locked), or `transcript_message` for a run's end to write with its own.
- `step_enqueue`: mark the run's lease `queued`, then send `sessions.run_step` to the tenant's queue.
- The abort flag: a Redis key a running step polls between stream events (or, while it waits for a reply
  asked for whole, a thread of the process polls for it, and cuts the reply's connection).
- The run lease (`bc:run:<id>:lease`): which worker runs the step, or that a step is queued, or that
  the run's tool calls are in flight (`tools`).
"""

import json
import logging
import socket
import threading
import time
from contextlib import AbstractContextManager, contextmanager
from functools import cache

from django.conf import settings

from beamclaw_project.infra.draining import cut_also_by, socket_cut
from beamclaw_project.infra.leases import (
    QUEUED,
    lease_requeue,
    lease_set,
    lease_set_call,
    lease_ttl_ms,
    lease_values,
    leases_lost_in_transit,
    leases_set,
    queued_ttl_ms,
)
from beamclaw_project.infra.queues import WORK_PRIORITY, tenant_queue
from beamclaw_project.infra.redis import Command, ScriptCall, get_call, redis_client, redis_script
from beamclaw_project.infra.rows import (
    Columns,
    instance_json,
    instances,
    rows_write,
    rows_write_at_commit,
    select_one,
    select_together,
)
from beamclaw_project.infra.tasks import task_send, tasks_push_commands, tasks_send
from sessions.models import AgentSession, Message, Run
from tenants.models import Tenant

RUN_STEP_TASK = "sessions.run_step"
# Held while a run's tool calls are in flight and no step is queued or running (see tool_phase.py).
TOOLS_PHASE = "tools"
ABORT_CHECK_INTERVAL = 0.2

logger = logging.getLogger(__name__)


# --- locks and the transcript ----------------------------------------------------------------------


# The engine's row locks are FOR NO KEY UPDATE: they exclude each other as FOR UPDATE would, but not the
# key-share locks Postgres takes to check a foreign key when a row pointing at the locked one is written
# (a tool invocation inserted under the tenant lock, naming a session another transaction holds, waited
# for it while that one waited for the tenant: a deadlock).


# Every step and every submitted message takes these locks, so their queries are written out
# (beamclaw_project/infra/rows.py); the run's is sent with the session's, in one round trip.
@cache
def _lock_sql() -> tuple[Columns, Columns, Columns, str, str]:
    session, tenant, run = Columns(AgentSession, "s"), Columns(Tenant, "t"), Columns(Run, "r")
    session_sql = (
        f'SELECT {session.sql}, {tenant.sql} FROM "{AgentSession._meta.db_table}" s '
        f'JOIN "{Tenant._meta.db_table}" t ON t.id = s.tenant_id WHERE s.id = %s FOR NO KEY UPDATE OF s'
    )
    run_sql = f'SELECT {run.sql} FROM "{Run._meta.db_table}" r WHERE r.id = %s FOR NO KEY UPDATE'
    return session, tenant, run, session_sql, run_sql


def run_lock(run_id, session_id=None) -> tuple[Run, AgentSession]:
    """Lock a run's session, then the run (inside the caller's transaction). A caller that has read the run
    passes its `session_id` (which never changes) and saves a query. Raises Run.DoesNotExist or
    AgentSession.DoesNotExist."""
    if session_id is None:
        session_id = Run.objects.values_list("session_id", flat=True).get(pk=run_id)
    run, session, _ = run_lock_reading(run_id, session_id)
    return run, session


def run_lock_reading(run_id, session_id, also: tuple[tuple[str, list], ...] = (), *,
                     after_start: bool = False) -> tuple[Run, AgentSession, list]:
    """run_lock, and the rows of each of the `also` statements, run after the locks in the same round trip.
    `after_start`: first wait for the commit of the transaction that starts the run (run_start_wait_statement),
    in the same round trip; a start rolled back meanwhile raises DoesNotExist as a missing run does."""
    _, _, run_columns, session_sql, run_sql = _lock_sql()
    wait = (run_start_wait_statement(run_id),) if after_start else ()
    results = select_together(*wait, (session_sql, [session_id]), (run_sql, [run_id]), *also)
    session_rows, run_rows, *also_rows = results[len(wait):]
    session = _session_of(session_rows[0] if session_rows else None, session_id)
    if not run_rows:
        raise Run.DoesNotExist(f"run {run_id} does not exist")
    return run_columns.instance(run_rows[0]), session, also_rows


def session_lock(session_id) -> AgentSession:
    """Lock a session (its tenant loaded). Raises AgentSession.DoesNotExist."""
    return _session_of(select_one(_lock_sql()[3], [session_id]), session_id)


def session_lock_statement(session_id) -> tuple[str, list]:
    """session_lock's statement, to send with others (select_together); session_of_lock_rows reads its rows."""
    return _lock_sql()[3], [session_id]


def session_of_lock_rows(rows: list[tuple], session_id) -> AgentSession:
    """The session session_lock_statement's rows locked. Raises AgentSession.DoesNotExist."""
    return _session_of(rows[0] if rows else None, session_id)


def _session_of(row, session_id=None) -> AgentSession:
    session_columns, tenant_columns, *_ = _lock_sql()
    if row is None:
        raise AgentSession.DoesNotExist(f"session {session_id} does not exist")
    session, tenant = instances(row, session_columns, tenant_columns)
    session.tenant = tenant
    return session


def transcript_append(session: AgentSession, *, session_fields: tuple[str, ...] = (), new_rows: tuple = (),
                      also: tuple[tuple[str, list], ...] = (), **fields) -> Message:
    """Append a message; the caller holds the session row lock. `session_fields`: other fields of the
    session the caller changed, saved in the same UPDATE. `new_rows`: other new instances to insert with the
    message, in order (the run it starts; first the session itself if it is new, which is then inserted with
    its next_seq rather than updated). `also`: statements to run after the writes (transcript_append_reading
    returns their rows). The writes go to Postgres together, in one round trip."""
    return transcript_append_reading(session, session_fields=session_fields, new_rows=new_rows, also=also, **fields)[0]


def transcript_message(session: AgentSession, **fields) -> Message:
    """The session's next message, not written yet: its seq is taken from the session (the caller holds its
    row lock), and the caller writes the two together, the message and the session's `next_seq` (what
    transcript_append does, or a run's end with its reply: lifecycle.run_end_locked)."""
    seq = session.next_seq
    session.next_seq = seq + 1
    return Message(session=session, seq=seq, **fields)


def transcript_append_reading(session: AgentSession, *, session_fields: tuple[str, ...] = (), new_rows: tuple = (),
                              updated_rows: tuple = (), also: tuple[tuple[str, list], ...] = (),
                              **fields) -> tuple[Message, list[list[tuple]]]:
    """transcript_append, and the rows of each of the `also` statements. `updated_rows`: (instance,
    update_fields) of other saved rows the caller changed, saved first, in the same round trip (the queued
    run the message starts)."""
    message, updates, inserts = _transcript_writes(session, session_fields, new_rows, updated_rows, fields)
    return message, rows_write(updates=updates, inserts=inserts, reads=also)


def transcript_append_at_commit(session: AgentSession, *, new_rows: tuple = (), updated_rows: tuple = (),
                                **fields) -> Message:
    """transcript_append_reading's writes (without `also`), sent with the open transaction's COMMIT rather than
    now (rows_write_at_commit): for a transaction whose last writes they are. `new_rows` count as saved from here
    (the commit writes them, or the transaction is gone); the message's generated key stays unknown."""
    message, updates, inserts = _transcript_writes(session, (), new_rows, updated_rows, fields)
    rows_write_at_commit(updates=updates, inserts=inserts)
    for row in new_rows:
        row._state.adding, row._state.db = False, "default"
    return message


def _transcript_writes(session: AgentSession, session_fields: tuple[str, ...], new_rows: tuple, updated_rows: tuple,
                       fields: dict) -> tuple[Message, list, list]:
    """The session's next message, and the (updates, inserts) that write it with `new_rows` and `updated_rows`:
    the session itself is inserted when it is one of `new_rows` (with the turns it was seeded with:
    transcript_seed_new), else its next_seq updated."""
    session_is_new = any(row is session for row in new_rows)
    seeded = transcript_seeded_messages(session) if session_is_new else []
    message = transcript_message(session, **fields)
    session_update = [] if session_is_new else [(session, ("next_seq", "updated_at", *session_fields))]
    # (The seeded turns and the message are one model's rows: one INSERT.)
    return message, [*updated_rows, *session_update], [*([row] for row in new_rows), [*seeded, message]]


def transcript_seed_new(session: AgentSession, turns: list[tuple[str, list[dict]]]) -> None:
    """Start the transcript of a session not written yet with `turns` (role, blocks): a client's history. They
    are written with the session, in the same round trip (transcript_seeded_messages), which a new session's
    run writes with its own message: no round trip of their own on the way to the first token."""
    session.next_seq = len(turns) + 1
    # What a new session's first step will read of them (first_step_reads), as transcript_seed keeps them.
    session.seeded_turns = [(role, blocks) for role, blocks in turns]


def transcript_seeded_messages(session: AgentSession) -> list[Message]:
    """The messages of the turns a session not written yet was seeded with (transcript_seed_new), to insert
    with it."""
    return [
        Message(session=session, seq=seq, role=role, content=blocks)
        for seq, (role, blocks) in enumerate(getattr(session, "seeded_turns", ()), 1)
    ]


# --- a run's step 0 sent before its transaction commits --------------------------------------------
# The transaction that starts a run in a session it made itself (a chat completion without a session)
# sends step 0 before it commits, so that the commit and the step's way to a worker overlap on the way to
# the first token. It takes this lock before sending (with the run's writes, or ahead of them when they go
# with the COMMIT), and holds it until it commits or rolls back. A step that reads its run waits for it first
# (run_start_wait_statement): no step reads a run before its commit, and a step whose run was rolled back finds
# no run and does nothing.
#
# Such a step 0 would read only what its web process has just written: the run, its session, the session's
# agent and tenant, the transcript (the request's messages) and the tenant's skill uploads' revision. The web
# process sends them with the step, in a message header (a worker of an earlier version ignores it), and the
# step's first delivery takes its run from them instead of reading it (sessions/runs/step.py,
# run_of_first_step_reads): that round trip was ~2 ms of the first token at c=1 (docs/performance.md, "Twentieth
# step"). Such a step asks the model at once, but waits for the commit before it writes anything, and writes
# nothing if the start was rolled back (run_started_statements).

# The message header, and the most sent in it (JSON): a bigger request's step reads its run, as later steps do.
FIRST_STEP_READS_HEADER = "first_step_reads"
FIRST_STEP_READS_MAX_BYTES = 64 * 1024


def run_start_lock_statement(run_id) -> tuple[str, list]:
    return "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", [f"beamclaw.run_start:{run_id}"]


def run_start_wait_statement(run_id) -> tuple[str, list]:
    """Waits while a transaction starting the run holds run_start_lock_statement's lock. The shared lock it
    takes lasts until its own transaction ends (a pipeline's statements up to its sync share an implicit one).
    The statements after it see the commit it waited for because each takes its own snapshot: Postgres's
    default READ COMMITTED, which Django keeps."""
    return "SELECT pg_advisory_xact_lock_shared(hashtextextended(%s, 0))", [f"beamclaw.run_start:{run_id}"]


def run_started_statements(run_id) -> list[tuple[str, list]]:
    """Wait for the commit of the transaction that starts the run (run_start_wait_statement), then say whether the
    run exists: a step that took its run from first_step_reads sends these before it writes anything."""
    return [run_start_wait_statement(run_id), (f'SELECT EXISTS (SELECT 1 FROM "{Run._meta.db_table}" WHERE id = %s)', [run_id])]


def first_step_reads_carried(session: AgentSession) -> bool:
    """Whether the first step of a run in `session` (new, in the caller's transaction) gets its reads with it:
    not when its agent has a key of its own, which is kept out of the broker's messages."""
    return not session.agent.api_key


def first_step_reads(session: AgentSession, run: Run, content: list[dict], uploads_revision: tuple) -> dict | None:
    """What step 0 of `run` would read, as the caller has just written it: the rows (rows.instance_json), the
    transcript's turns (what transcript_seed wrote of the request's earlier turns, then the run's user message
    `content`) and the tenant's skill uploads' revision (tools/skills.py). None when it is too big to send, or
    holds what JSON cannot carry."""
    count, updated = uploads_revision
    reads = {
        "run": instance_json(run), "session": instance_json(session), "agent": instance_json(session.agent),
        "tenant": instance_json(session.tenant),
        "turns": [*getattr(session, "seeded_turns", ()), (Message.Role.USER.value, content)],
        "uploads_revision": [count, updated.isoformat() if updated is not None else None],
    }
    try:
        size = len(json.dumps(reads))
    except (TypeError, ValueError):  # a value JSON cannot carry: the step reads it, as from a web process without this
        return None
    return reads if size <= FIRST_STEP_READS_MAX_BYTES else None


# --- the run lease ---------------------------------------------------------------------------------


def run_lease_key(run_id) -> str:
    return f"bc:run:{run_id}:lease"


def run_mark_queued(run_id) -> bool:
    """Record that a step for this run sits in a queue. Never overwrites a worker's lease: a step is
    enqueued either before any worker holds the run, or by the worker holding it (which then releases).
    Replaces the tools-phase marker: the step enqueued when the last tool call settles must find the
    lease free to take, or it would be skipped and wait for the reaper (a 90 s stall once)."""
    source, keys, args = run_mark_queued_call(run_id)
    return bool(redis_script(source)(keys=keys, args=args))


def run_mark_queued_call(run_id) -> ScriptCall:
    """run_mark_queued, to send with other calls (infra/redis.redis_scripts_call)."""
    return lease_set_call(run_lease_key(run_id), QUEUED, ttl_ms=queued_ttl_ms(), replacing=(QUEUED, TOOLS_PHASE))


def runs_mark_queued(run_ids: list) -> None:
    """run_mark_queued for runs just started together (their leases are new), in one round trip."""
    leases_set([run_lease_key(run_id) for run_id in run_ids], QUEUED, ttl_ms=queued_ttl_ms(), replacing=(QUEUED, TOOLS_PHASE))


def tools_marker_ttl_ms() -> int:
    # Three lease times; housekeeping renews the marker while calls are open.
    return 3 * lease_ttl_ms()


def run_mark_tools_phase(run_ids) -> None:
    """Mark runs whose tool calls are in flight, unless a worker or a queued step holds the lease."""
    for run_id in run_ids:
        lease_set(run_lease_key(run_id), TOOLS_PHASE, ttl_ms=tools_marker_ttl_ms(), replacing=(TOOLS_PHASE,))


def step_hand_back(lease, run_id, step: int, tenant_slug: str) -> None:
    """A draining worker gives a step it holds back to the queue: the lease goes from its token to
    `queued` in one swap (no moment in which the reaper could take the run for an orphan), then the step
    is sent again for another worker."""
    lease.hand_over(QUEUED, ttl_ms=queued_ttl_ms())
    _step_send(run_id, step, tenant_slug)


def runs_stranded(runs: list[tuple]) -> tuple[list, list]:
    """Of these running runs ((run id, tenant slug) pairs): those no worker holds and no queue holds a step
    for (orphans: their worker died), and those whose queued step was lost on its way to a worker."""
    values = lease_values([run_lease_key(run_id) for run_id, _ in runs])
    orphans = [run_id for (run_id, _), value in zip(runs, values) if value is None]
    queued = [(run_id, slug) for (run_id, slug), value in zip(runs, values) if value == QUEUED.encode()]
    lost = leases_lost_in_transit([(run_lease_key(run_id), tenant_queue(slug)) for run_id, slug in queued])
    return orphans, [run_id for (run_id, _), gone in zip(queued, lost) if gone]


def step_enqueue(run_id, step: int, tenant_slug: str, *, only_if_free: bool = False) -> bool:
    """Mark the run's step queued and send it; with only_if_free (the reaper), only if nothing held the
    lease or had queued a step. Returns whether it was sent."""
    if only_if_free:
        if not lease_set(run_lease_key(run_id), QUEUED, ttl_ms=queued_ttl_ms()):
            return False
    else:
        run_mark_queued(run_id)
    _step_send(run_id, step, tenant_slug)
    return True


def first_steps_send(run_ids: list, tenant_slug: str, reads: dict | None = None) -> None:
    """Send step 0 of runs the caller marked queued (runs_mark_queued), in one round trip. `reads`: run id ->
    what its step would read (first_step_reads), sent with it."""
    tasks_send([_step_task(run_id, 0, tenant_slug, (reads or {}).get(run_id)) for run_id in run_ids])


def first_steps_commands(run_ids: list, tenant_slug: str, reads: dict | None = None) -> list[Command] | None:
    """first_steps_send's Redis commands, to send with others; None when the broker is another Redis
    database than the events' (then first_steps_send)."""
    return tasks_push_commands([_step_task(run_id, 0, tenant_slug, (reads or {}).get(run_id)) for run_id in run_ids])


def step_resend(run_id, step: int, tenant_slug: str) -> bool:
    """Send again a step lost on its way to a worker (runs_stranded), unless a worker took it meanwhile."""
    if not lease_requeue(run_lease_key(run_id)):
        return False
    _step_send(run_id, step, tenant_slug)
    return True


def _step_send(run_id, step: int, tenant_slug: str) -> None:
    name, args, queue, priority, _ = _step_task(run_id, step, tenant_slug)
    task_send(name, args, queue=queue, priority=priority)


def _step_task(run_id, step: int, tenant_slug: str, reads: dict | None = None) -> tuple[str, list, str, int, dict]:
    """A run step's task: its name, arguments, the tenant's queue, the priority work travels at, and its
    message's own headers (`reads`: first_step_reads's, for a new session's step 0)."""
    return (RUN_STEP_TASK, [str(run_id), step], tenant_queue(tenant_slug), WORK_PRIORITY,
            {FIRST_STEP_READS_HEADER: reads} if reads is not None else {})


# --- the abort flag --------------------------------------------------------------------------------


def _abort_key(run_id) -> str:
    return f"bc:run:{run_id}:abort"


def abort_flag_set(run_id, reason: str) -> None:
    redis_client().set(_abort_key(run_id), reason, ex=settings.BEAMCLAW["EVENT_STREAM_TTL_SECONDS"])


def abort_flag_reason(run_id) -> str | None:
    return abort_flag_read(redis_client().get(_abort_key(run_id)))


def abort_flag_call(run_id) -> Command:
    """abort_flag_reason, to send with other calls (redis_scripts_call): hand its result to abort_flag_read."""
    return get_call(_abort_key(run_id))


def abort_flag_read(value: bytes | None) -> str | None:
    return value.decode() if value is not None else None


class AbortCheck:
    """Polls the abort flag at most every ABORT_CHECK_INTERVAL seconds: a Redis round trip per stream
    event would cost more than the event."""

    def __init__(self, run_id, *, read_at: float | None = None):
        """`read_at`: when the caller read the flag itself (time.monotonic()), which counts as a check: a
        step reads it as it starts, and a poll at the stream's first event was a round trip on the way to
        the first token."""
        self.key = _abort_key(run_id)
        self.next_check = 0.0 if read_at is None else read_at + ABORT_CHECK_INTERVAL
        self.seen = False  # once found set (here, or by the watch of abort_cuts_reads), it stays

    def __call__(self) -> bool:
        now = time.monotonic()
        if self.seen or now < self.next_check:
            return self.seen
        self.next_check = now + ABORT_CHECK_INTERVAL
        self.seen = self.seen or bool(redis_client().exists(self.key))
        return self.seen


def abort_cuts_reads(check: AbortCheck) -> AbstractContextManager:
    """While inside, the connection this thread reads a model's reply from (under cut_on_drain) is shut down
    once `check`'s run is aborted, and `check` then says so: a step that asked for its reply whole has no
    stream events between which to poll the flag, and would otherwise notice an abort only once the model
    had written everything."""
    return cut_also_by(lambda sock: _abort_watch.watching(check, sock))


class _AbortWatch:
    """One daemon thread per process that polls the abort flags of the runs whose replies are read whole,
    every ABORT_CHECK_INTERVAL, all in one round trip (MGET), and cuts the connection of each one aborted."""

    def __init__(self):
        self._watched: dict[int, tuple[AbortCheck, socket.socket]] = {}
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    @contextmanager
    def watching(self, check: AbortCheck, sock: socket.socket):
        with self._changed:
            self._watched[id(check)] = (check, sock)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="abort-watch", daemon=True)
                self._thread.start()
            self._changed.notify()
        try:
            yield
        finally:
            with self._changed:
                self._watched.pop(id(check), None)

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._watched:
                    self._changed.wait()
            time.sleep(ABORT_CHECK_INTERVAL)
            with self._changed:
                watched = list(self._watched.values())
            if not watched:
                continue
            try:
                flags = redis_client().mget([check.key for check, _ in watched])
            except Exception as exc:  # noqa: BLE001 - an outage: the next tick tries again
                logger.debug("abort watch: could not read the abort flags (%s)", exc)
                continue
            for (check, sock), flag in zip(watched, flags):
                if flag is None:
                    continue
                with self._changed:
                    # Only while the step still reads from it: once its read is over the connection goes back
                    # to the pool, and another step's request may be on it by now.
                    if self._watched.get(id(check)) == (check, sock):
                        check.seen = True
                        socket_cut(sock)


_abort_watch = _AbortWatch()
