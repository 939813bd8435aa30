"""Executing one step of a run (the `sessions.run_step` task): ask the provider, stream the reply, then
either end the run or hand its tool calls to the tool phase. In JSON mode (json_mode.py) the reply
that would end the run is checked first: a reply that fails gets one repair step, then fails the run.

A step runs under the run's lease. The reply is written once per step (unique per run and step), so a
redelivered task cannot duplicate it; a step whose worker died is found by the reaper (housekeeping.py)
and run again, and text that already reached clients is not streamed a second time. A step that loses
Redis or PostgreSQL pauses (the reaper resumes it once the store is back) rather than failing the run;
one whose worker is shutting down goes back to the queue at its next stream event.
"""

import logging
import time
from contextlib import nullcontext, suppress
from datetime import datetime
from functools import cache

from django.conf import settings
from django.db import close_old_connections, transaction
from django.utils import timezone

from beamclaw_project.infra.draining import draining
from beamclaw_project.infra.leases import Lease
from beamclaw_project.infra.log_context import log_context_bind
from beamclaw_project.infra.metrics import first_token_observe, step_duration_observe, tokens_record
from beamclaw_project.infra.outages import outage_of
from beamclaw_project.infra.redis import CONNECTION_LOST, ScriptCall, ScriptsSent, counter_incr, counter_incr_call
from beamclaw_project.infra.rows import Columns, instance_of_json, instances, jsonb_ordered, row_update, select_together
from sessions import events
from sessions.models import AgentSession, Message, Run
from sessions.providers.base import Aborted, Completion, CompletionRequest, ProviderError, request_sampling
from sessions.providers.chain import complete
from sessions.runs import tool_phase
from sessions.runs.budget import record_tokens
from sessions.runs.compaction import compaction_due, compaction_if_needed
from sessions.runs.context import (
    TranscriptView,
    VisibleMessage,
    transcript_view,
    transcript_view_of,
    transcript_view_statements,
)
from sessions.runs.delta_window import QUIET_WINDOW_SECONDS, UNSTREAMED_PARAM, DeltaWindow
from sessions.runs.json_mode import INVALID_JSON, REPAIR_PARAM, ReplyCheck, failure_message, repair_prompt, reply_check
from sessions.runs.kernel import (
    TOOLS_PHASE,
    AbortCheck,
    abort_cuts_reads,
    abort_flag_call,
    abort_flag_read,
    abort_flag_reason,
    run_lease_key,
    run_lock,
    run_lock_reading,
    run_start_wait_statement,
    run_started_statements,
    step_hand_back,
    tools_marker_ttl_ms,
    transcript_append,
    transcript_message,
)
from sessions.runs.lifecycle import pending_runs_statement, run_end_locked
from sessions.runs.prompt import system_prompt_for
from tenants.models import Agent, Tenant
from tools.skills import uploads_revision_known, uploads_revision_statement

logger = logging.getLogger(__name__)

MAX_STEP_FAILURES = 3


class DeltaPublisher:
    """Publishes text deltas, skipping the first `skip` characters (already streamed by a crashed attempt),
    and none once the lease is lost (the worker that took the step over streams them). The first text of a
    run's first step is its first token (metrics); an attempt that resumes a stream is past it. Deltas
    that come within a couple of milliseconds of each other go out together, those of a run nobody streams
    within half a second (delta_window.py); `close()` sends what waits, before the step publishes anything
    else. A streamed run's deltas are appended without waiting for each answer (events.DeltaAppends):
    `flush()`, `take()` and `close()` read the answers, so what the step publishes next comes after them. If
    the appends' connection breaks, what did not land is appended again (`_append_what_was_lost`)."""

    def __init__(self, run_id, step: int, skip: int, lease: Lease, *, tenant: str, run_started_at: datetime | None,
                 unstreamed: bool = False):
        self.run_id = run_id
        self.step = step
        self.skip = skip
        self.lease = lease
        self.seen = 0
        self.parts: list[str] = []
        self.tenant = tenant
        self.first_token_from = run_started_at if step == 0 and skip == 0 else None
        self.window = DeltaWindow(self._send, quiet_window=QUIET_WINDOW_SECONDS if unstreamed else None)
        # A quiet window needs each append's answer: whether a reader follows the stream (delta_window.py).
        self.appends = None if unstreamed else events.DeltaAppends(run_id)
        # The length of the step's text in its stream once every append sent has landed.
        self.streamed = skip

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def __call__(self, text: str) -> None:
        if self.first_token_from is not None:
            first_token_observe(tenant=self.tenant, seconds=(timezone.now() - self.first_token_from).total_seconds())
            self.first_token_from = None
        self.parts.append(text)
        start = self.seen
        self.seen += len(text)
        if self.seen <= self.skip or self.lease.lost():
            return
        self.window.add(text[max(0, self.skip - start):])

    def flush(self) -> None:
        """Send what waits now, and read what Redis answered (the step is failing: a failure to send is kept
        for close(), and one of the answers' is the step's failure's to report)."""
        self.window.flush()
        with suppress(Exception):
            self._settle()

    def take(self) -> dict | None:
        """The delta still waiting, taken unsent (the caller publishes it with what it publishes next), or None."""
        text = self.window.take()
        self._settle()
        return {"text": text, "step": self.step} if text else None

    def close(self) -> None:
        self.window.close()
        self._settle()

    def _settle(self) -> None:
        if self.appends is None:
            return
        try:
            self.appends.settle()
        except CONNECTION_LOST as lost:
            self._append_what_was_lost(lost)

    def _send(self, text: str) -> bool | None:
        if self.lease.lost():  # (again: a joined delta may be sent a moment after it came)
            return None
        payload = {"text": text, "step": self.step}
        if self.appends is None:
            return events.publish_delta(self.run_id, payload)
        self.streamed += len(text)
        try:
            self.appends.send(payload)
        except CONNECTION_LOST as lost:
            self._append_what_was_lost(lost)
        return None

    def _append_what_was_lost(self, lost: Exception) -> None:
        """The appends' connection broke (a client timeout, a restart): those that landed are the first of
        those sent, in order. The rest is appended again as one delta, waiting for Redis's answer (with
        redis-py's retries; Redis still away is the step's outage): each character reaches the stream once."""
        if self.lease.lost():
            return  # (the worker that took the step over streams what is missing)
        landed = len(events.published_text(self.run_id, self.step))
        if not self.skip <= landed <= self.streamed:
            raise lost  # the stream is not this step's to mend (Redis lost it): readers are told it was lost
        if landed < self.streamed:
            events.publish_delta(self.run_id, {"text": self.text[landed:self.streamed], "step": self.step})


class _HandedBack(Exception):
    """The worker is shutting down: the step stopped streaming and goes back to the queue."""

    def __init__(self, tenant_slug: str):
        super().__init__(tenant_slug)
        self.tenant_slug = tenant_slug


class _LeaseLost(Exception):
    """This worker was stalled for longer than the lease (a frozen process or machine) and another worker
    took the step over: stop streaming, write nothing."""


class _StopCheck:
    """What the provider polls between stream events: whether this worker is draining or has lost the
    step's lease (both checked first: they cost no round trip while all is well), and the run's abort flag."""

    def __init__(self, run_id, lease: Lease, *, abort_read_at: float):
        self.aborted = AbortCheck(run_id, read_at=abort_read_at)
        self.lease = lease

    def __call__(self) -> bool:
        return draining() or self.lease.lost() or self.aborted()


class _CallbackFailures:
    """Remembers an exception raised by the engine's own callbacks during a provider call, so it surfaces
    as itself however the provider reports it (a provider sees only a failing callback and may well
    classify it as a network error of its own)."""

    def __init__(self):
        self.error: Exception | None = None

    def guard(self, callback):
        def call(*args):
            try:
                return callback(*args)
            except Exception as exc:
                self.error = exc
                raise

        return call


def run_step(*, run_id, step: int, reads: dict | None = None) -> None:
    """`reads`: what a new session's step 0 would read, sent with it (kernel.first_step_reads)."""
    try:
        _run_step_leased(run_id, step, reads if step == 0 else None)
    except Exception as exc:
        store = outage_of(exc)
        if store is None:
            raise
        # Not the run's fault: it stays open, and once the store is back the reaper finds it without a
        # worker and sends the step again (text that already reached clients is not streamed twice).
        logger.warning("run %s step %s paused: %s is unavailable (%s); it resumes once it is back", run_id, step, store, exc)


def _run_step_leased(run_id, step: int, reads: dict | None = None) -> None:
    # A step may be picked up over the tools marker: a re-sent step only drives the open calls (step_resume).
    lease = Lease(run_lease_key(run_id), takes_over=(TOOLS_PHASE,))
    # One round trip for the lease, the number of this delivery of the step (a later one skips text already
    # streamed) and the run's abort flag: each on its own was a round trip on the way to the first token.
    taking_since = time.monotonic()
    with ScriptsSent([lease.acquire_call(), _count_call(run_id, step, "attempts"), abort_flag_call(run_id),
                      events.followers_call(run_id)]) as sent:
        # The run is read while Redis answers (a read is harmless to a delivery that finds the step taken);
        # a failed read is raised below, under the lease, as a failure of the step itself.
        run, read_error = None, None
        try:
            run = run_of_first_step_reads(run_id, reads) if reads is not None else None
            if run is None:
                run = run_for_step(run_id, step)
        except BaseException as exc:  # noqa: BLE001 - raised below, once the lease can be let go
            read_error = exc
        took, attempt, abort_flag, followers = sent.results()
    if not lease.acquired(took, since=taking_since):
        logger.info("run %s step %s is held by another worker; skipping this delivery", run_id, step)
        if read_error is not None and not isinstance(read_error, Exception):
            raise read_error
        return
    waits_for_tools = False
    handed_back: _HandedBack | None = None
    try:
        try:
            if read_error is not None:
                raise read_error
            if int(attempt) > 1:
                # A delivery of a step that was delivered before may have read its run just before that
                # delivery ended the step and queued the next one, then taken the next one's marker: read it
                # again, now that the lease is held. (A first delivery cannot: no step runs before it.)
                run = run_for_step(run_id, step)
            tools_started = _execute_step(run, step, int(attempt), lease, abort_flag_read(abort_flag), taking_since,
                                          followed=events.followers_read(followers) > 0)
        except _HandedBack as exc:
            handed_back = exc
        except _LeaseLost:
            logger.warning("run %s step %s: this worker stalled past its lease and another took the step over; "
                           "stopped without writing", run_id, step)
        except Exception as exc:
            if outage_of(exc) is not None:
                raise
            # A bug or a broken dependency, not a provider error: the reaper would retry it forever, so
            # give up on the run after a few failures, saying why.
            failures = _count(run_id, step, "failures")
            logger.exception("run %s step %s failed unexpectedly (failure %s)", run_id, step, failures)
            if failures < MAX_STEP_FAILURES:
                raise
            _finish_failed(run_id, step, f"Internal error while running step {step}: {exc!r}", code="internal_error")
        else:
            # Still at this step: its calls are open (if they all settled at once, the run moved on).
            waits_for_tools = tools_started and Run.objects.filter(
                pk=run_id, step=step, status__in=Run.ACTIVE_STATUSES
            ).exists()
    finally:
        if handed_back is not None:
            step_hand_back(lease, run_id, step, handed_back.tenant_slug)
            logger.info("run %s step %s handed back to the queue: this worker is shutting down", run_id, step)
        else:
            _let_go(lease, waits_for_tools)


def _let_go(lease: Lease, waits_for_tools: bool) -> None:
    try:
        if waits_for_tools:
            # The step ended in the tool phase: leave the tools marker, or the reaper would take the run
            # for an orphan and re-send this step every tick until the calls settle.
            lease.hand_over(TOOLS_PHASE, ttl_ms=tools_marker_ttl_ms())
        else:
            lease.release()
    except Exception as exc:
        if outage_of(exc) is None:
            raise
        # Redis is gone, and the lease with it (or it lapses within the lease time): nothing to give back.


def _count(run_id, step: int, what: str) -> int:
    """Count this step's failures (the run fails after MAX_STEP_FAILURES; an outage is not a failure)."""
    return counter_incr(_count_key(run_id, step, what), ttl_seconds=settings.BEAMCLAW["EVENT_STREAM_TTL_SECONDS"])


def _count_call(run_id, step: int, what: str) -> ScriptCall:
    """Count this step's deliveries (`attempts`; a later one skips text already streamed), with other calls."""
    return counter_incr_call(_count_key(run_id, step, what), ttl_seconds=settings.BEAMCLAW["EVENT_STREAM_TTL_SECONDS"])


def _count_key(run_id, step: int, what: str) -> str:
    return f"bc:run:{run_id}:step:{step}:{what}"


@cache
def _run_for_step_sql() -> tuple[Columns, Columns, Columns, Columns, str]:
    run, session, agent, tenant = Columns(Run, "r"), Columns(AgentSession, "s"), Columns(Agent, "a"), Columns(Tenant, "t")
    sql = (
        f"SELECT {run.sql}, {session.sql}, {agent.sql}, {tenant.sql}, EXISTS ("
        f'SELECT 1 FROM "{Message._meta.db_table}" m WHERE m.run_id = r.id AND m.step = %s AND m.role = %s) '
        f'FROM "{Run._meta.db_table}" r JOIN "{AgentSession._meta.db_table}" s ON s.id = r.session_id '
        f'JOIN "{Agent._meta.db_table}" a ON a.id = s.agent_id JOIN "{Tenant._meta.db_table}" t ON t.id = r.tenant_id '
        "WHERE r.id = %s"
    )
    return run, session, agent, tenant, sql


def run_for_step(run_id, step: int) -> Run | None:
    """The run with its session, the session's agent and the tenant, `reply_written`: whether the step's
    reply exists, and `view`: its session's transcript as the model sees it (context.py); the agent knows
    its tenant's skill uploads' revision (tools/skills.py). Every step starts with these queries, so they are
    written out (beamclaw_project/infra/rows.py) and sent together."""
    run_columns, session_columns, agent_columns, tenant_columns, sql = _run_for_step_sql()
    # Step 0 may come before its run's commit (kernel.run_start_lock_statement): the reads wait for it.
    wait = [run_start_wait_statement(run_id)] if step == 0 else []
    rows, revision, *view_rows = select_together(
        *wait, (sql, [step, Message.Role.ASSISTANT, run_id]), uploads_revision_statement(run_id),
        *transcript_view_statements(run_id=run_id),
    )[len(wait):]
    if not rows:
        return None
    run, session, agent, tenant = instances(rows[0], run_columns, session_columns, agent_columns, tenant_columns)
    return _run_joined(run, session, agent, tenant, reply_written=rows[0][-1], view=transcript_view_of(*view_rows),
                       uploads_revision=revision[0])


def _run_joined(run: Run, session: AgentSession, agent: Agent, tenant: Tenant, *, reply_written: bool,
                view: TranscriptView, uploads_revision: tuple) -> Run:
    """The run as a step uses it: its session, agent and tenant joined, `reply_written`, `view`, and the agent
    knowing its tenant's skill uploads' revision."""
    run.session, session.agent = session, agent
    run.tenant = session.tenant = agent.tenant = tenant
    run.reply_written = reply_written
    run.view = view
    uploads_revision_known(agent, uploads_revision)
    return run


def run_of_first_step_reads(run_id, reads: dict) -> Run | None:
    """A new session's run as its web process wrote it, from what it sent with step 0 (kernel.first_step_reads),
    with what run_for_step gives. Its start may not have committed yet: the step finds out before it writes
    (_start_committed). None when the step reads its run after all: its context is due for compaction first (which
    writes), or what came cannot be used (a web process of another version, say)."""
    try:
        run, session = instance_of_json(Run, reads["run"]), instance_of_json(AgentSession, reads["session"])
        agent, tenant = instance_of_json(Agent, reads["agent"]), instance_of_json(Tenant, reads["tenant"])
        view = TranscriptView(compaction=None, messages=[
            VisibleMessage(seq, role, jsonb_ordered(content), {}, None) for seq, (role, content) in enumerate(reads["turns"], 1)])
        count, updated = reads["uploads_revision"]
        revision = (count, datetime.fromisoformat(updated) if updated is not None else None)
    except (KeyError, TypeError, ValueError) as exc:
        logger.warning("run %s: what came with its first step could not be used (%r); the step reads its run", run_id, exc)
        return None
    if str(run.pk) != str(run_id) or run.session_id != session.pk or session.agent_id != agent.pk:
        logger.warning("run %s: what came with its first step is another run's; the step reads its run", run_id)
        return None
    if compaction_due(agent=agent, session_id=session.pk, view=view):
        return None
    run = _run_joined(run, session, agent, tenant, reply_written=False, view=view, uploads_revision=revision)
    run.start_uncommitted = True
    return run


def _start_committed(run: Run) -> bool:
    """Whether the run's start committed, which a step must know before it writes anything: at once for a run read
    from the database; for one that came with its step (run_of_first_step_reads), after waiting for the commit
    (by the time the model has replied it is usually long done). False when the start was rolled back (a tenant's
    last slot, raced for at its commit): nothing is written, and the reply is dropped."""
    if not getattr(run, "start_uncommitted", False):
        return True
    run.start_uncommitted = False
    return _run_start_committed(run.pk)


def _run_start_committed(run_id) -> bool:
    _, exists = select_together(*run_started_statements(run_id))
    if not exists[0][0]:
        _log_start_rolled_back(run_id)
    return exists[0][0]


def _log_start_rolled_back(run_id) -> None:
    logger.info("run %s: its start was rolled back; its first step's reply is dropped", run_id)


def _execute_step(run: Run | None, step: int, attempt: int, lease: Lease, abort_reason: str | None,
                  abort_read_at: float, *, followed: bool) -> bool:
    """Run the step of `run` (run_for_step's, read as the step was taken); True when it left the run in its
    tool phase. `abort_reason`: the run's abort flag, as read when the step was taken (at `abort_read_at`,
    time.monotonic()); `followed`: whether anyone followed the run's stream then."""
    if run is None or run.status != Run.Status.RUNNING or run.step != step:
        return False
    run_id = run.pk
    log_context_bind(tenant=run.tenant.slug, session=run.session_id)
    # The step's reply exists: its tool calls are in flight (the reaper re-sent the step); drive them.
    if run.reply_written:
        tool_phase.step_resume(run, step, lease)
        return True
    if abort_reason is not None:
        if _start_committed(run):
            _finish_aborted(run_id, step, partial_text="")
        return False
    if step >= settings.BEAMCLAW["STEP_CAP"]:
        _finish_failed(
            run_id, step, f"Run stopped after {step} steps (step cap {settings.BEAMCLAW['STEP_CAP']}).", code="step_cap"
        )
        return False

    agent = run.session.agent
    began = time.monotonic()
    view = run.view
    unstreamed = bool(run.params.get(UNSTREAMED_PARAM))
    # Nobody reads this reply as it comes: ask the model for it whole (one read instead of one per token).
    # Whoever starts following the run meanwhile gets it whole at the end.
    whole_reply = unstreamed and not followed
    # Older turns are summarized first when the context nears the agent's budget (compaction.py).
    if compaction_if_needed(run=run, agent=agent, view=view) is not None:
        view = transcript_view(run.session_id)
    request = CompletionRequest(
        model=agent.model,
        system=system_prompt_for(agent, run.params.get("system"), run.params.get("response_format")),
        messages=view.turns(),
        max_tokens=min(int(run.params.get("max_tokens") or agent.max_tokens), agent.max_tokens),
        **request_sampling(run.params),
        tools=tool_phase.offered_tools(agent, run.session, run.params),
        tool_choice=tool_phase.tool_choice_for(run.params, step),
        whole_reply=whole_reply,
    )
    # Streaming takes seconds; give the Postgres connection back to the pool meanwhile.
    close_old_connections()

    tenant_slug = run.tenant.slug
    already_streamed = events.published_text(run_id, step) if attempt > 1 else ""
    publish_delta = DeltaPublisher(run_id, step, skip=len(already_streamed), lease=lease, tenant=tenant_slug,
                                   run_started_at=run.started_at, unstreamed=unstreamed)
    callbacks = _CallbackFailures()
    stop_check = _StopCheck(run_id, lease, abort_read_at=abort_read_at)

    held_delta = None
    try:
        try:
            with abort_cuts_reads(stop_check.aborted) if whole_reply else nullcontext():
                completion = complete(
                    agent, request, on_text=callbacks.guard(publish_delta), should_abort=callbacks.guard(stop_check)
                )
        except BaseException:
            publish_delta.flush()  # what waits goes out before anything else is published
            raise
        if whole_reply:
            # The reply's text (it waits in its quiet window) goes out with what the step publishes next: the
            # run's end, in one round trip, when the reply ends the run (step_finish).
            held_delta = publish_delta.take()
        publish_delta.close()
    except Aborted:
        if lease.lost():
            raise _LeaseLost() from None
        if draining() and abort_flag_reason(run_id) is None:
            # Stopped for the shutdown, not by a user: another worker runs the step again, and what
            # already reached clients is not streamed twice.
            raise _HandedBack(tenant_slug)
        if _start_committed(run):
            _finish_aborted(run_id, step, partial_text=publish_delta.text)
        return False
    except ProviderError as exc:
        if callbacks.error is not None:
            # Our own callback failed (Redis went away while publishing): not the provider's error.
            raise callbacks.error from exc
        if _start_committed(run):
            _finish_failed(run_id, step, exc.message, code=exc.kind)
        return False
    finally:
        step_duration_observe(tenant=tenant_slug, seconds=time.monotonic() - began)
    # Checked before the transaction: a schema check of a long reply need not hold the run's locks.
    json_check = reply_check(run.params.get("response_format"), completion)
    start_uncommitted = getattr(run, "start_uncommitted", False)
    return step_finish(run_id, run.session_id, step, completion, lease, json_check, held_delta=held_delta,
                       start_uncommitted=start_uncommitted)


def step_finish(run_id, session_id, step: int, completion: Completion, lease: Lease, json_check: ReplyCheck | None,
                *, held_delta: dict | None = None, start_uncommitted: bool = False) -> bool:
    """Write the reply, then end the run, start its tool calls (True), or (JSON mode) ask for a repair.
    `held_delta`: the reply's last text delta, not published yet: it goes out with the run's end, or first.
    `start_uncommitted`: the run came with its step (run_of_first_step_reads), its start perhaps not committed
    yet; nothing is written (or published) before it has, and nothing at all if it was rolled back."""
    ends_run = not tool_phase.reply_calls_tools(completion) and (json_check is None or json_check.valid)
    has_calls = any(block.get("type") == "tool_use" for block in completion.content)
    # A reply that ends the run (most do) takes two round trips: the locks with what the session has
    # waiting, then the writes with the commit (run_end_locked's `pending_rows`).
    written_at_end = ends_run and not has_calls
    if held_delta is not None and not written_at_end:
        if start_uncommitted and not _run_start_committed(run_id):
            return False
        start_uncommitted = False
        events.publish_delta(run_id, held_delta)
        held_delta = None
    with transaction.atomic():
        try:
            # A start not known to have committed is waited for in the locks' round trip, not one of its own.
            run, session, also_rows = run_lock_reading(
                run_id, session_id, also=(pending_runs_statement(session_id),) if written_at_end else (),
                after_start=start_uncommitted,
            )
        except (Run.DoesNotExist, AgentSession.DoesNotExist):
            if not start_uncommitted:
                raise
            _log_start_rolled_back(run_id)
            return False
        if run.status != Run.Status.RUNNING or run.step != step:
            return False
        _add_usage(run, session, completion.input_tokens, completion.output_tokens)
        reply = dict(role=Message.Role.ASSISTANT, content=completion.content, run=run, step=step, usage=completion.usage)
        session_fields = ("input_tokens", "output_tokens")
        if written_at_end:
            message = transcript_message(session, **reply)
        else:
            message = transcript_append(session, session_fields=session_fields, **reply)
        tokens = completion.input_tokens + completion.output_tokens
        spent = {"input_tokens": completion.input_tokens, "output_tokens": completion.output_tokens}
        transaction.on_commit(lambda: tokens_record(tenant=session.tenant.slug, **spent))
        if not ends_run:
            # Counted after the commit, ahead of the hooks the tool phase registers (a hook that raises stops
            # the ones after it); a run that ends here counts them in its end's round trip.
            transaction.on_commit(lambda: record_tokens(tenant_id=run.tenant_id, tokens=tokens))
            if tool_phase.step_tool_calls(run=run, session=session, step=step, completion=completion, lease=lease):
                return True  # the run continues once the tool calls settle
            _json_invalid_locked(run, session, step, json_check, lease)
            return False
        payload = {
            "run_id": str(run.pk),
            "message": {"seq": message.seq, "role": message.role, "content": message.content},
            # In JSON mode the clean JSON (no fence); the transcript keeps the reply as written.
            "text": json_check.text if json_check is not None else completion.text,
            "stop_reason": completion.stop_reason,
            "model": completion.model,
            "usage": run.usage,
        }
        end_with = dict(reply=message, session_fields=session_fields, pending_rows=also_rows[0]) if written_at_end else {}
        run_end_locked(run, Run.Status.SUCCEEDED, session=session, payload=payload, step_has_calls=has_calls,
                       tokens_spent=tokens, releasing=lease, text_delta=held_delta, **end_with)
    return False


def _json_invalid_locked(run: Run, session, step: int, check: ReplyCheck, lease: Lease) -> None:
    """The final reply failed the run's JSON format (caller holds the session and run locks and has written
    the reply). The first time, ask for a repair: a user message that says what was wrong, and the next
    step. The repair is recorded in the run's params in this transaction, so a step delivered again cannot
    repair twice; after it, the run fails."""
    response_format = run.params["response_format"]
    if REPAIR_PARAM in run.params:
        run.error_code = INVALID_JSON
        run_end_locked(run, Run.Status.FAILED, error=failure_message(response_format, check), session=session)
        return
    # Without `run`: Message allows one user message per run (its input), as for tool results. Messages
    # sent in steer mode do not join here (this turn asks the model for one thing only): they wait for a
    # later step boundary, or run once this run ends.
    transcript_append(
        session, role=Message.Role.USER, content=[{"type": "text", "text": repair_prompt(response_format, check)}],
        step=step,
    )
    run.params = {**run.params, REPAIR_PARAM: step}
    run.step = step + 1
    row_update(run, ("params", "step", "input_tokens", "output_tokens"))
    run_id, next_step, slug = run.pk, run.step, session.tenant.slug
    # The lease goes from this worker to the queued step in one swap, then the step is sent: with the lease
    # still ours, a worker quick to pick the step up would find it taken and drop it.
    transaction.on_commit(lambda: step_hand_back(lease, run_id, next_step, slug))


def _finish_failed(run_id, step: int, error: str, code: str = "") -> None:
    with transaction.atomic():
        run, session = run_lock(run_id)
        if run.status != Run.Status.RUNNING or run.step != step:
            return
        run.error_code = code
        run_end_locked(run, Run.Status.FAILED, error=error, session=session)


def _finish_aborted(run_id, step: int, partial_text: str) -> None:
    """End an aborted run; what the user already saw of the reply stays in the transcript."""
    with transaction.atomic():
        run, session = run_lock(run_id)
        if run.is_terminal or run.step != step:
            return
        if partial_text:
            transcript_append(
                session,
                role=Message.Role.ASSISTANT,
                content=[{"type": "text", "text": partial_text}],
                run=run,
                step=step,
            )
        run_end_locked(run, Run.Status.ABORTED, error=abort_flag_reason(run_id) or "aborted", session=session)


def _add_usage(run: Run, session, input_tokens: int, output_tokens: int) -> None:
    """Count a reply's tokens on the run and the session; the caller saves both."""
    run.input_tokens += input_tokens
    run.output_tokens += output_tokens
    session.input_tokens += input_tokens
    session.output_tokens += output_tokens
