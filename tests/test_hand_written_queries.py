"""The hot path's hand-written queries (beamclaw_project/infra/rows.py) read and write what the ORM would,
as prepared statements, on pooled connections checked before they are lent.

Authentication, every run step and every lock read their rows with SQL written out once instead of a
compiled QuerySet; an agent's JSON settings, a run's params or a key's scopes read any other way would
change what the gateway does. Every field is compared, with its type, against the ORM's instance."""

import json
import re
import select
import uuid
from contextlib import contextmanager, nullcontext

import psycopg
import pytest
from django.db import DatabaseError, connection, transaction
from django.db.models import Q
from django.utils import timezone
from psycopg import pq

from beamclaw_project.infra.leases import Lease
from beamclaw_project.infra.redis import redis_client
from beamclaw_project.infra.rows import row_insert, row_update, rows_insert, rows_write, select_one
from beamclaw_project.postgres.base import PreparedCursor, connection_usable
from sessions.models import AgentSession, Compaction, Message, Run, ToolCall
from sessions.providers.base import Completion
from sessions.runs.context import transcript_view
from sessions.runs.kernel import first_step_reads, run_lease_key, run_lock, session_lock
from sessions.runs.lifecycle import (
    TenantAtCap,
    tenant_at_cap_from_commit,
    tenant_room_and_waiting_locked,
    tenant_room_check_at_commit,
    tenant_room_locked,
    tenant_room_statements,
)
from sessions.runs.step import run_for_step, run_of_first_step_reads, step_finish
from sessions.runs.tool_phase import RUN_CALLS
from tenants.auth import AuthError, authenticate_key, authenticate_key_for_agent
from tenants.models import Agent, ApiKey, Tenant
from tools.models import Skill
from tools.skills import tenant_uploads_revision_statement


def assert_same(mine, model, pk, *, read=True):
    """Every field equal to the ORM's read of the row; for a read, of the same type too (a written instance
    keeps the values it was given, a choices enum say, as after save())."""
    orm = model.objects.get(pk=pk)
    assert type(mine) is model and not mine._state.adding and mine._state.db == "default"
    for field in model._meta.concrete_fields:
        ours, theirs = getattr(mine, field.attname), getattr(orm, field.attname)
        assert ours == theirs and (not read or type(ours) is type(theirs)), field.name


def test_authentication_loads_the_key_its_tenant_and_the_named_agent_as_the_orm_does(make_tenant):
    bundle = make_tenant()
    Agent.objects.filter(pk=bundle.agent.pk).update(
        tool_policy={"allow": ["exec"], "deny": []}, fallbacks=["fake-echo"], compaction={"keep_recent_tokens": 900}
    )
    authenticate_key(bundle.api_key)  # (sets last_used_at, which the next read then finds)
    principal, agent = authenticate_key_for_agent(bundle.api_key, bundle.agent.slug)
    assert_same(principal.api_key, ApiKey, principal.api_key.pk)
    assert_same(principal.tenant, Tenant, bundle.tenant.pk)
    assert_same(agent, Agent, bundle.agent.pk)
    assert agent.tool_policy == {"allow": ["exec"], "deny": []} and agent.tenant is principal.tenant

    assert authenticate_key_for_agent(bundle.api_key, "no-such-agent")[1] is None
    assert_same(authenticate_key(bundle.api_key).api_key, ApiKey, principal.api_key.pk)
    with pytest.raises(AuthError, match="Invalid API key"):
        authenticate_key("bc_" + uuid.uuid4().hex)


def test_a_step_and_the_locks_load_the_run_and_session_as_the_orm_does(make_tenant):
    bundle = make_tenant()
    session = AgentSession.objects.create(tenant=bundle.tenant, agent=bundle.agent, key=f"agent:x:{uuid.uuid4().hex}")
    # Not submitted, and already ended: no worker or reaper may change it between the two reads.
    run = Run.objects.create(tenant=bundle.tenant, session=session, trigger=Run.Trigger.API, status=Run.Status.SUCCEEDED,
                             input=[{"type": "text", "text": "hi"}], params={"max_tokens": 64, "temperature": 0.5})

    loaded = run_for_step(run.pk, 0)
    assert_same(loaded, Run, run.pk)
    assert_same(loaded.session, AgentSession, session.pk)
    assert_same(loaded.session.agent, Agent, bundle.agent.pk)
    assert_same(loaded.tenant, Tenant, bundle.tenant.pk)
    assert loaded.params["temperature"] == 0.5 and loaded.reply_written is False
    assert run_for_step(uuid.uuid4(), 0) is None

    # The transcript, read with the run by the run's id, is what the session's own read gives: from the
    # latest compaction's cut on, without excluded messages.
    for seq, text in enumerate(["old", "kept", "dropped", "latest"], 1):
        Message.objects.create(session=session, seq=seq, role=Message.Role.USER, content=[{"type": "text", "text": text}],
                               excluded_reason="failed" if text == "dropped" else "")
    Compaction.objects.create(session=session, first_kept_seq=2, summary="earlier")
    view = run_for_step(run.pk, 0).view
    assert view == transcript_view(session.pk)
    assert view.compaction.summary == "earlier" and [m.seq for m in view.messages] == [2, 4]

    with transaction.atomic():
        locked_run, locked_session = run_lock(run.pk)
        assert_same(locked_run, Run, run.pk)
        assert_same(locked_session, AgentSession, session.pk)
        assert_same(locked_session.tenant, Tenant, bundle.tenant.pk)
        with pytest.raises(AgentSession.DoesNotExist):
            session_lock(uuid.uuid4())
        with pytest.raises(Run.DoesNotExist):
            run_lock(uuid.uuid4(), session.pk)


def test_a_tool_call_s_claim_and_record_load_what_the_orm_does(make_tenant):
    # A worker claims a model's tool call (the pending -> running update and what the tool runs with, in one
    # statement), and records its result under the session's, the run's and the call's locks.
    bundle = make_tenant()
    Agent.objects.filter(pk=bundle.agent.pk).update(tool_policy={"allow": ["exec"], "deny": []}, sandbox={"network": False})
    session = AgentSession.objects.create(tenant=bundle.tenant, agent=bundle.agent, key=f"agent:x:{uuid.uuid4().hex}")
    # Ended already, so no worker or reaper touches it meanwhile: the claim still loads it, the record stops there.
    run = Run.objects.create(tenant=bundle.tenant, session=session, trigger=Run.Trigger.API, status=Run.Status.ABORTED,
                             input=[{"type": "text", "text": "hi"}], params={"temperature": 0.5})
    call = ToolCall.objects.create(run=run, step=0, tool_use_id="toolu_1", name="exec", input={"command": "ls"})

    claimed = RUN_CALLS.call_claim(call.pk, node="worker@test")
    assert claimed.tool == "exec" and claimed.input == {"command": "ls"}
    assert claimed.refusal == "not run: the run was aborted or has ended"
    context = claimed.context
    assert_same(context.session, AgentSession, session.pk)
    assert_same(context.agent, Agent, bundle.agent.pk)
    assert_same(context.tenant, Tenant, bundle.tenant.pk)
    assert context.session.agent is context.agent and context.agent.tenant is context.tenant is context.session.tenant
    stored = ToolCall.objects.get(pk=call.pk)
    assert stored.status == ToolCall.Status.RUNNING and stored.started_at is not None
    assert RUN_CALLS.call_claim(call.pk, node="worker@test") is None, "a call is claimed once"

    RUN_CALLS.call_record(call.pk, {"ok": True, "output": "done"})
    stored = ToolCall.objects.get(pk=call.pk)
    assert (stored.status, stored.output) == (ToolCall.Status.SUCCEEDED, {"ok": True, "output": "done"})
    assert stored.finished_at is not None
    RUN_CALLS.call_record(call.pk, {"ok": False})  # settled already: nothing changes
    assert ToolCall.objects.get(pk=call.pk).output == {"ok": True, "output": "done"}
    RUN_CALLS.call_record(uuid.uuid4().int % 2**62, {"ok": True})  # a call that is gone: nothing to record



def test_a_new_session_s_first_step_gets_with_its_message_what_it_would_read(make_tenant):
    # A chat completion's step 0 takes its run from what the web process sent with it (sessions/runs/kernel.py,
    # first_step_reads), as JSON in the message's header: every field, with its type, as run_for_step reads it.
    bundle = make_tenant()
    Agent.objects.filter(pk=bundle.agent.pk).update(
        tool_policy={"allow": ["exec"], "deny": []}, fallbacks=["fake-echo"], compaction={"keep_recent_tokens": 900}
    )
    session = AgentSession.objects.create(tenant=bundle.tenant, agent=bundle.agent, key=f"agent:x:{uuid.uuid4().hex}",
                                          ephemeral=True)
    # (Keys in an order jsonb does not keep: what the model is sent must be the same bytes either way.)
    earlier = [("user", [{"type": "text", "text": "earlier"}]), ("assistant", [{"type": "text", "text": "reply"}])]
    for seq, (role, content) in enumerate(earlier, 1):
        Message.objects.create(session=session, seq=seq, role=role, content=content)
    run = Run.objects.create(tenant=bundle.tenant, session=session, trigger=Run.Trigger.OPENAI, status=Run.Status.RUNNING,
                             started_at=timezone.now(), input=[{"type": "text", "text": "hi"}],
                             params={"temperature": 0.5, "max_tokens": 64, "stop": ["x"],
                                     "response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": {}}}})
    Message.objects.create(session=session, seq=3, role="user", content=run.input, run=run)
    Skill.objects.create(tenant=bundle.tenant, name="notes", description="d", skill_md="---", archive=b"", digest="0",
                         file_count=1, size=1)
    try:
        _first_step_reads_match_the_reads(bundle, session, run, earlier)
    finally:  # (nothing may be left running for a worker's reaper: its response_format is not one a request stores)
        Run.objects.filter(pk=run.pk).update(status=Run.Status.SUCCEEDED)


def _first_step_reads_match_the_reads(bundle, session, run, earlier):
    session = AgentSession.objects.select_related("agent__tenant", "tenant").get(pk=session.pk)
    session.seeded_turns = earlier
    revision = select_one(*tenant_uploads_revision_statement(bundle.tenant.pk))
    session.agent.skills = {"enabled": ["notes"], "disabled": []}  # (as saved: in the caller's order)
    Agent.objects.filter(pk=bundle.agent.pk).update(skills=session.agent.skills)
    reads = json.loads(json.dumps(first_step_reads(session, run, run.input, revision)))
    carried, read = run_of_first_step_reads(run.pk, reads), run_for_step(run.pk, 0)
    assert_same(carried, Run, run.pk)
    assert_same(carried.session, AgentSession, session.pk)
    assert_same(carried.session.agent, Agent, bundle.agent.pk)
    assert_same(carried.tenant, Tenant, bundle.tenant.pk)
    assert carried.session.agent.tenant is carried.tenant and carried.reply_written is False
    assert json.dumps(carried.view.turns()) == json.dumps(read.view.turns())
    assert json.dumps(carried.params) == json.dumps(read.params)
    assert json.dumps(carried.session.agent.skills) == json.dumps(read.session.agent.skills)
    assert carried.session.agent._uploads_revision == read.session.agent._uploads_revision == revision
    assert run_of_first_step_reads(uuid.uuid4(), reads) is None  # another run's
    assert run_of_first_step_reads(run.pk, {**reads, "agent": reads["agent"][:-1]}) is None  # another version's


def test_hand_written_writes_store_what_save_would(make_tenant):
    bundle = make_tenant()
    session = row_insert(AgentSession(tenant=bundle.tenant, agent=bundle.agent, key=f"agent:x:{uuid.uuid4().hex}"))
    assert_same(session, AgentSession, session.pk, read=False)
    assert session.created_at is not None and session.updated_at is not None  # auto_now_add, auto_now

    content = [{"type": "text", "text": "héllo", "cache_control": {"type": "ephemeral"}}]
    message = row_insert(Message(session=session, seq=1, role=Message.Role.USER, content=content))
    assert message.pk is not None  # the generated key, read back
    assert_same(message, Message, message.pk, read=False)
    assert Message.objects.get(pk=message.pk).content == content

    before = session.updated_at
    session.next_seq, session.status = 7, AgentSession.Status.CLOSED
    row_update(session, ("next_seq", "updated_at"))
    stored = AgentSession.objects.get(pk=session.pk)
    assert stored.next_seq == 7 and stored.updated_at > before
    assert stored.status == AgentSession.Status.ACTIVE, "only the named fields are written"

    AgentSession.objects.filter(pk=session.pk).delete()
    with pytest.raises(DatabaseError, match="did not affect any rows"):
        row_update(session, ("next_seq",))
    with pytest.raises(DatabaseError, match="did not affect any rows"):  # the same, sent with other writes
        rows_write(updates=[(session, ("next_seq",))])
    with pytest.raises(ValueError):
        row_insert(message)


def test_batch_inserts_store_what_bulk_create_would_and_read_back_the_keys(make_tenant):
    """Cron's burst writes a tenant's new sessions, runs and first messages in one round trip: every row as
    bulk_create would write it, each generated key read back onto its own instance."""
    bundle = make_tenant()
    # Closed sessions with ended runs: no worker or reaper of the shared stack takes them up.
    sessions = [AgentSession(tenant=bundle.tenant, agent=bundle.agent, key=f"cron:x:{uuid.uuid4().hex}", ephemeral=True,
                             status=AgentSession.Status.CLOSED, next_seq=151 if i == 0 else 1) for i in range(3)]
    runs = [Run(tenant=bundle.tenant, session=session, trigger=Run.Trigger.CRON, input=[{"type": "text", "text": f"n{i}"}],
                params={"queue_mode": "followup"}, status=Run.Status.SUCCEEDED) for i, session in enumerate(sessions)]
    messages = [Message(session=sessions[0], seq=seq, role=Message.Role.USER, content=[{"type": "text", "text": str(seq)}])
                for seq in range(1, 151)]
    rows_insert(sessions, runs, messages)

    for instance in [*sessions, *runs]:
        assert_same(instance, type(instance), instance.pk, read=False)
    assert len({message.pk for message in messages}) == len(messages)
    for message in messages:  # each key is its own row's: its text is its seq
        assert_same(message, Message, message.pk, read=False)
        assert Message.objects.get(pk=message.pk).content == [{"type": "text", "text": str(message.seq)}]
    with pytest.raises(ValueError):
        rows_insert(messages[:1])


def test_the_hot_queries_are_prepared_and_planned_once_per_connection(make_tenant):
    """Planning the step's four-table join cost Postgres more than running it: after the few custom plans
    Postgres tries first, the same connection reuses one plan (psycopg turns preparing off unless told)."""
    bundle = make_tenant()
    session = AgentSession.objects.create(tenant=bundle.tenant, agent=bundle.agent, key=f"agent:x:{uuid.uuid4().hex}")
    run = Run.objects.create(tenant=bundle.tenant, session=session, trigger=Run.Trigger.API, status=Run.Status.SUCCEEDED,
                             input=[{"type": "text", "text": "hi"}])
    with transaction.atomic():  # one connection throughout
        for _ in range(8):
            run_for_step(run.pk, 0)
        with connection.cursor() as cursor:
            cursor.execute("SELECT generic_plans FROM pg_prepared_statements WHERE statement LIKE %s",
                           ['%FROM "agent_sessions_run" r JOIN%'])
            assert [plans for (plans,) in cursor.fetchall()] >= [1]


def test_a_pooled_connection_whose_server_process_ended_is_not_lent(db):
    """After PostgreSQL restarts, each idle pooled connection is dead; the check before lending one sees
    that without a round trip (the server's goodbye makes the idle socket readable)."""
    params = connection.get_connection_params()
    params.pop("cursor_factory", None)
    with psycopg.connect(**params, autocommit=True) as pooled, psycopg.connect(**params, autocommit=True) as admin:
        assert connection_usable(pooled)
        pid = pooled.info.backend_pid
        admin.execute("SELECT pg_terminate_backend(%s)", [pid])
        select.select([pooled.fileno()], [], [], 30)  # (the goodbye arrives as soon as the backend exits)
        assert not connection_usable(pooled)
        assert connection_usable(admin)


class _Rollback(Exception):
    pass


@contextmanager
def libpq_trace(path):
    """What this thread's connection sends and receives meanwhile, written to `path` (libpq's trace)."""
    connection.ensure_connection()
    pgconn = connection.connection.pgconn
    with open(path, "w") as out:
        pgconn.trace(out.fileno())
        pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS)
        try:
            yield
        finally:
            pgconn.untrace()


def sent_before_first_sync(path) -> tuple[list[str], list[str]]:
    """(the messages sent in the first round trip, all the messages sent). A round trip ends with a Sync,
    or is a simple Query (how psycopg sends a BEGIN alone)."""
    sent = [line for line in path.read_text().splitlines() if line.startswith("F")]
    end = next(i for i, line in enumerate(sent) if "\tSync" in line or "\tQuery" in line)
    return sent[:end + 1], sent


def statements_in(messages: list[str]) -> int:
    """How many statements the messages run (an Execute each in the extended protocol, or a simple Query)."""
    return sum("\tExecute" in line or "\tQuery" in line for line in messages)


def test_a_transaction_begins_in_the_round_trip_of_its_first_statements_and_stays_one(make_tenant, tmp_path):
    """A run's start opens its transaction with the tenant's lock and count, sent together: BEGIN goes in
    that round trip rather than one of its own (postgres/connection.py), and what follows is one
    transaction all the same, undone whole by a rollback and kept whole by a commit."""
    bundle = make_tenant()

    def start(key: str, trace_to=None, fail: bool = False):
        with transaction.atomic(), (libpq_trace(trace_to) if trace_to else nullcontext()):
            assert tenant_room_locked(bundle.tenant.pk) > 0
            rows_insert([AgentSession(tenant=bundle.tenant, agent=bundle.agent, key=key)])
            rows_insert([AgentSession(tenant=bundle.tenant, agent=bundle.agent, key=f"{key}:second")])
            if fail:
                raise _Rollback()

    trace = tmp_path / "start.trace"
    kept = f"agent:x:{uuid.uuid4().hex}"
    start(kept, trace_to=trace)
    first_round_trip, sent = sent_before_first_sync(trace)
    # (By shape, not SQL text: a statement this connection prepared before is sent by name.)
    assert any('"BEGIN"' in line for line in first_round_trip)
    assert statements_in(first_round_trip) == 3  # BEGIN, the tenant's lock, the count
    assert sum('"BEGIN"' in line for line in sent) == 1  # the later statements found the transaction open
    assert AgentSession.objects.filter(key__in=[kept, f"{kept}:second"]).count() == 2

    undone = f"agent:x:{uuid.uuid4().hex}"
    with pytest.raises(_Rollback):
        start(undone, fail=True)
    assert not AgentSession.objects.filter(key__startswith=undone).exists()

    # A message to a session that exists starts by locking it, one statement: its BEGIN goes with it too.
    session = AgentSession.objects.get(key=kept)
    trace = tmp_path / "lock.trace"
    with transaction.atomic(), libpq_trace(trace):
        assert session_lock(session.pk).pk == session.pk
    first_round_trip, _ = sent_before_first_sync(trace)
    assert any('"BEGIN"' in line for line in first_round_trip)
    assert statements_in(first_round_trip) == 2  # BEGIN and the lock


def test_a_statement_sent_with_the_commit_runs_in_its_round_trip_and_its_failure_keeps_nothing(make_tenant, tmp_path):
    """A new session's run counts its tenant's room in its COMMIT (postgres/base.py send_with_commit), so the
    tenant's lock is held only inside Postgres: the statement goes in the commit's round trip, after the
    transaction's writes (it sees them); if it fails, the commit raises its error and nothing the
    transaction wrote is kept; a transaction rolled back forgets it."""
    bundle = make_tenant()

    def new_session(key: str) -> None:
        rows_insert([AgentSession(tenant=bundle.tenant, agent=bundle.agent, key=key)])

    kept = f"agent:x:{uuid.uuid4().hex}"
    trace = tmp_path / "commit.trace"
    with libpq_trace(trace), transaction.atomic():
        new_session(kept)
        connection.send_with_commit("SELECT 1 / count(*) FROM agent_sessions_agentsession WHERE key = %s", [kept])
    sent = [line for line in trace.read_text().splitlines() if line.startswith("F")]
    statement = next(i for i, line in enumerate(sent) if "SELECT 1 / count(*)" in line)
    commit = next(i for i, line in enumerate(sent) if '"COMMIT"' in line)
    # Nothing between them ends a round trip (a Sync, or a Flush that sends what is queued), and the
    # statement comes after the insert, in a round trip of its own with the COMMIT.
    assert statement < commit
    assert not [line for line in sent[statement:commit] if "\tSync" in line or "\tFlush" in line], sent[statement:commit]
    assert statements_in(sent[:statement]) >= 2  # BEGIN and the insert (by name if prepared before)
    assert AgentSession.objects.filter(key=kept).exists()

    refused = f"agent:x:{uuid.uuid4().hex}"
    with pytest.raises(DatabaseError) as failure:
        with transaction.atomic():
            new_session(refused)
            connection.send_with_commit("SELECT 1 / count(*) FROM agent_sessions_agentsession WHERE key = %s", ["none"])
    assert failure.value.__cause__.sqlstate == "22012"  # division by zero: the count was 0
    assert not AgentSession.objects.filter(key=refused).exists()

    with pytest.raises(_Rollback), transaction.atomic():
        connection.send_with_commit("SELECT 1 / 0", [])
        raise _Rollback()
    after = f"agent:x:{uuid.uuid4().hex}"
    with transaction.atomic():
        new_session(after)
    assert AgentSession.objects.filter(key=after).exists(), "the rolled-back transaction's statement was dropped"


def test_the_tenant_s_room_counted_at_commit_refuses_a_run_over_the_cap_and_keeps_one_within_it(make_tenant):
    bundle = make_tenant()
    Tenant.objects.filter(pk=bundle.tenant.pk).update(max_concurrent_runs=1)

    def start() -> Run:
        session = AgentSession.objects.create(tenant=bundle.tenant, agent=bundle.agent, key=f"agent:x:{uuid.uuid4().hex}")
        with tenant_at_cap_from_commit(), transaction.atomic():
            run = Run.objects.create(tenant=bundle.tenant, session=session, trigger=Run.Trigger.OPENAI,
                                     status=Run.Status.RUNNING, input=[{"type": "text", "text": "hi"}])
            tenant_room_check_at_commit(bundle.tenant.pk)
        return run

    first = start()
    assert Run.objects.filter(pk=first.pk, status=Run.Status.RUNNING).exists()
    with pytest.raises(TenantAtCap):
        start()
    assert Run.objects.filter(tenant=bundle.tenant).count() == 1, "the refused run was rolled back"
    Run.objects.filter(pk=first.pk).update(status=Run.Status.SUCCEEDED)
    last = start()
    assert Run.objects.filter(pk=last.pk, status=Run.Status.RUNNING).exists()
    # Ended at once: a worker's reaper would take a running run nobody drives for its own and ask the model with
    # an empty transcript.
    Run.objects.filter(pk=last.pk).update(status=Run.Status.SUCCEEDED)


def test_runs_waiting_for_room_are_those_queued_in_sessions_with_no_active_run(make_tenant):
    """A run queued behind its own session's active run waits for that run, not for the tenant's room: a new
    request is not sent the queuing way because of it."""
    bundle = make_tenant()
    Tenant.objects.filter(pk=bundle.tenant.pk).update(max_concurrent_runs=5)

    def run_in(session, status):
        return Run.objects.create(tenant=bundle.tenant, session=session, trigger=Run.Trigger.OPENAI, status=status,
                                  input=[{"type": "text", "text": "hi"}])

    busy, idle = (AgentSession.objects.create(tenant=bundle.tenant, agent=bundle.agent, key=f"agent:x:{uuid.uuid4().hex}")
                  for _ in range(2))
    run_in(busy, Run.Status.RUNNING)
    run_in(busy, Run.Status.QUEUED)  # (a follow-up)
    run_in(idle, Run.Status.QUEUED)
    run_in(idle, Run.Status.SUCCEEDED)
    try:
        with transaction.atomic():
            assert tenant_room_and_waiting_locked(bundle.tenant.pk) == (4, 1)
    finally:  # (as above: nothing may be left for a worker's reaper)
        Run.objects.filter(tenant=bundle.tenant).update(status=Run.Status.SUCCEEDED)


def test_the_index_of_unfinished_runs_and_the_commit_s_count_name_the_model_s_statuses(db):
    """Both name statuses as SQL literals (a planner uses a partial index only for a query that names what
    its condition names); a status added to the model must be added to them too."""
    [index] = [index for index in Run._meta.indexes if index.name == "run_unfinished_by_tenant"]
    assert index.condition == Q(status__in=[Run.Status.QUEUED, *Run.ACTIVE_STATUSES])
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_get_functiondef('beamclaw_tenant_room_check(bigint)'::regprocedure)")
        [(definition,)] = cursor.fetchall()
    named = set(re.search(r"status IN \(([^)]*)\)", definition).group(1).replace("'", "").replace(" ", "").split(","))
    assert named == {str(status) for status in Run.ACTIVE_STATUSES}


@pytest.mark.parametrize("queued", [False, True], ids=["active", "active and queued"])
def test_a_run_start_counts_its_tenant_s_runs_from_the_index_of_unfinished_runs(make_tenant, queued):
    """The count, as a prepared statement's generic plan reads it: from the index of unfinished runs, whose size
    is what runs now, not from an index that holds every run the tenant ever had."""
    bundle = make_tenant()
    [_, (count, _)] = tenant_room_statements(bundle.tenant.pk, queued=queued)
    count = count.replace("%s", "$1")
    with transaction.atomic(), connection.cursor() as cursor:
        # (A test's few rows would be read whole otherwise.)
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        cursor.execute(f"PREPARE tenant_count(bigint) AS {count}")
        cursor.execute("EXPLAIN EXECUTE tenant_count(%s)", [bundle.tenant.pk])
        plan = "\n".join(line for (line,) in cursor.fetchall())
        cursor.execute("DEALLOCATE tenant_count")
    assert "run_unfinished_by_tenant" in plan, plan


def test_a_database_without_the_commit_s_count_sends_the_run_the_queuing_way(make_tenant, caplog):
    """Code deployed before `migrate`: the commit's function is missing; the run is submitted again the way
    that needs none (TenantAtCap), and the log says what to run."""
    bundle = make_tenant()
    session = AgentSession.objects.create(tenant=bundle.tenant, agent=bundle.agent, key=f"agent:x:{uuid.uuid4().hex}")
    with connection.cursor() as cursor:
        cursor.execute("ALTER FUNCTION beamclaw_tenant_room_check(bigint) RENAME TO beamclaw_tenant_room_check_away")
    try:
        with pytest.raises(TenantAtCap), tenant_at_cap_from_commit(), transaction.atomic():
            Run.objects.create(tenant=bundle.tenant, session=session, trigger=Run.Trigger.OPENAI,
                               status=Run.Status.RUNNING, input=[{"type": "text", "text": "hi"}])
            tenant_room_check_at_commit(bundle.tenant.pk)
    finally:
        with connection.cursor() as cursor:
            cursor.execute("ALTER FUNCTION beamclaw_tenant_room_check_away(bigint) RENAME TO beamclaw_tenant_room_check")
    assert not Run.objects.filter(session=session).exists()
    assert "manage.py migrate" in caplog.text


def round_trips_in(sent: list[str]) -> int:
    """How many round trips the messages took: each ends with a Sync (a pipeline's, or an extended-protocol
    statement's) or is a simple Query."""
    return sum("\tSync" in line or "\tQuery" in line for line in sent)


def test_a_run_s_end_takes_two_round_trips_its_writes_going_with_the_commit(make_tenant, tmp_path):
    """A reply that ends its run is written in two round trips: the locks with what the session has waiting,
    then the reply, the run's end and the session's with the COMMIT (lifecycle.run_end_locked's
    `pending_rows`). What is written is what the four round trips wrote before: the message at the
    session's next seq, the run succeeded with its tokens, the session's counters and its close."""
    bundle = make_tenant()
    session = AgentSession.objects.create(tenant=bundle.tenant, agent=bundle.agent, key=f"agent:x:{uuid.uuid4().hex}",
                                          ephemeral=True, next_seq=2)
    # Not submitted: no worker takes it.
    run = Run.objects.create(tenant=bundle.tenant, session=session, trigger=Run.Trigger.OPENAI, status=Run.Status.RUNNING,
                             input=[{"type": "text", "text": "hi"}], params={})
    reply = Completion(content=[{"type": "text", "text": "Hello there."}], stop_reason="end_turn", model="m",
                       input_tokens=11, output_tokens=3)
    lease = Lease(run_lease_key(run.pk))
    assert lease.acquire()
    trace = tmp_path / "end.trace"
    with libpq_trace(trace):
        assert step_finish(run.pk, session.pk, 0, reply, lease=lease, json_check=None) is False
    # The step's lease went back with the run's end announced (one Redis round trip after the commit).
    assert lease.released and redis_client().get(run_lease_key(run.pk)) is None
    first, sent = sent_before_first_sync(trace)
    assert statements_in(first) == 4  # BEGIN, the session's lock, the run's, the session's runs
    commit = next(i for i, line in enumerate(sent) if '"COMMIT"' in line)
    assert statements_in(sent[len(first):commit]) == 3  # the run's end, the session's, the reply
    # The transaction ends with the first sync after its COMMIT (later: a query after the commit, seeding
    # the tenant's token count for the day).
    ended = next(i for i in range(commit, len(sent)) if "\tSync" in sent[i])
    assert round_trips_in(sent[:ended + 1]) == 2, sent

    run.refresh_from_db()
    session.refresh_from_db()
    assert (run.status, run.input_tokens, run.output_tokens, run.finished_at is not None) == ("succeeded", 11, 3, True)
    assert (session.status, session.next_seq, session.input_tokens, session.output_tokens) == ("closed", 3, 11, 3)
    message = Message.objects.get(session=session, seq=2)
    assert (message.role, message.run_id, message.step, message.content) == ("assistant", run.pk, 0, reply.content)
    assert message.usage == {"input_tokens": 11, "output_tokens": 3}


def test_a_statement_s_error_read_as_its_pipeline_ends_is_raised_rather_than_the_commit_it_aborted(db):
    """A check sent with the commit fails: its error is what the commit raises, whenever the server's answer
    was read. psycopg reads it while it sends the pipeline's sync if it has come by then (here: waited for),
    and then raised the COMMIT's "pipeline aborted" over it, which the web process answered as Postgres
    being down (503) rather than as the tenant at its cap."""
    connection.ensure_connection()
    raw = connection.connection
    with pytest.raises(psycopg.errors.DivisionByZero), transaction.atomic():
        with raw.pipeline(), PreparedCursor(raw) as cursor:
            cursor.execute("SELECT 1 / %s", [0])
            # The server's answer has come: the pipeline's end reads it while it sends.
            assert select.select([raw.pgconn.socket], [], [], 30)[0]
            raw.commit_queued()
    assert Tenant.objects.exists() is not None  # the connection is usable after the rollback
