"""The durable run engine (DESIGN §5).

A run is a chain of short, idempotent `run_step` tasks on its tenant's queue; Postgres holds every bit of
state, Redis holds only the live event stream and the leases. Invariants:

- one active run per session: runs wait as `queued` and start in order (`_advance_locked`), always under
  the session's row lock;
- a run's user message enters the transcript when the run starts, its reply exactly once per step
  (unique constraints back both, so a redelivered task cannot duplicate either);
- a step whose worker died is found by the reaper (no lease in Redis) and run again; text that already
  reached clients is not streamed a second time.
"""

import logging
import time
from datetime import timedelta

from django.conf import settings
from django.db import close_old_connections, connection, transaction
from django.utils import timezone

from sessions import events
from sessions.events import redis_client
from sessions.leases import RunLease, mark_queued, unleased
from sessions.models import AgentSession, Message, Run
from sessions.notify import notify_session
from sessions.providers import get_provider
from sessions.providers.base import Aborted, Completion, CompletionRequest, ProviderError
from sessions.signals import run_finished
from tenants.limits import check_token_budget, record_tokens
from tenants.models import Tenant
from tenants.queues import tenant_queue
from tools import loop as tool_loop

logger = logging.getLogger(__name__)

ABORT_CHECK_INTERVAL = 0.2
RUN_FAILED_UNANSWERED = "its run failed before the model answered"


def _abort_key(run_id) -> str:
    return f"bc:run:{run_id}:abort"


def _attempts_key(run_id, step: int) -> str:
    return f"bc:run:{run_id}:step:{step}:attempts"


# --- starting runs ---------------------------------------------------------------------------------


class SessionClosed(Exception):
    """The session no longer takes messages (an ephemeral session whose request is over)."""


def run_submit(
    *,
    session: AgentSession,
    content: list[dict],
    trigger: str,
    params: dict | None = None,
    mode: str | None = None,
) -> Run:
    """Take a user turn for a session and return the run that will answer it.

    While a run of the session is active the message follows the queue mode (the session's unless `mode`
    overrides it): `followup` queues a run; `collect` folds it into the run already waiting, if any;
    `steer` queues a run that the active run absorbs at its next step boundary (else it runs next);
    `interrupt` aborts the active run and anything waiting, then runs this message.
    Raises LimitExceeded when the tenant's daily token budget is used up, SessionClosed for a closed session.
    """
    check_token_budget(tenant=session.tenant)
    mode = mode or session.queue_mode
    with transaction.atomic():
        locked = AgentSession.objects.select_for_update(of=("self",)).select_related("tenant").get(pk=session.pk)
        if locked.status == AgentSession.Status.CLOSED:
            raise SessionClosed(f"Session {locked.key} is closed.")
        # Workers change a session's runs only under the session lock held here, so this read is current.
        pending = list(
            Run.objects.filter(session=locked, status__in=(Run.Status.QUEUED, *Run.ACTIVE_STATUSES)).order_by("created_at")
        )
        active = next((r for r in pending if r.status in Run.ACTIVE_STATUSES), None)
        queued = [r for r in pending if r.status == Run.Status.QUEUED]
        if active is not None and mode == AgentSession.QueueMode.COLLECT:
            waiting = next(
                (r for r in reversed(queued) if r.params.get("queue_mode") == AgentSession.QueueMode.COLLECT), None
            )
            if waiting is not None:
                waiting.input = [*waiting.input, *content]
                waiting.save(update_fields=["input"])
                return waiting
        if active is not None and mode == AgentSession.QueueMode.INTERRUPT:
            for superseded in queued:
                _end_run_locked(superseded, Run.Status.ABORTED, error="superseded by a newer message", session=locked)
            queued = []
            _abort_locked(active, "interrupted by a newer message", locked)
            if active.is_terminal:
                active = None
        run = Run(
            tenant_id=locked.tenant_id,
            session=locked,
            input=content,
            trigger=trigger,
            params={**(params or {}), "queue_mode": mode},
        )
        if active is None and not queued and _tenant_has_capacity_locked(locked.tenant_id):
            _start_run_locked(locked, run)  # the common case: straight to running, one insert
            return run
        run.save()
        if active is None:
            started = _advance_locked(locked)
            if started is not None and started.pk == run.pk:
                return started
    return run


def session_advance(*, session_id) -> Run | None:
    with transaction.atomic():
        session = AgentSession.objects.select_for_update(of=("self",)).select_related("tenant").get(pk=session_id)
        return _advance_locked(session)


def _tenant_has_capacity_locked(tenant_id) -> bool:
    """Whether the tenant may start another run. Locks the tenant row so that concurrent starts count
    each other (lock order everywhere: session, then tenant)."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            SELECT t.max_concurrent_runs,
                   (SELECT count(*) FROM {Run._meta.db_table} r WHERE r.tenant_id = t.id AND r.status = ANY(%s))
            FROM {Tenant._meta.db_table} t WHERE t.id = %s FOR UPDATE OF t
            """,
            [[str(status) for status in Run.ACTIVE_STATUSES], tenant_id],
        )
        limit, active = cursor.fetchone()
    return active < limit


def _advance_locked(session: AgentSession) -> Run | None:
    """Start the session's oldest queued run if none is active and the tenant has room for it.
    Caller holds the session row lock."""
    pending = list(
        Run.objects.filter(session=session, status__in=(Run.Status.QUEUED, *Run.ACTIVE_STATUSES)).order_by("created_at")
    )
    if not pending or any(r.status in Run.ACTIVE_STATUSES for r in pending):
        return None
    if not _tenant_has_capacity_locked(session.tenant_id):
        return None
    return _start_run_locked(session, pending[0])


def _start_run_locked(session: AgentSession, run: Run) -> Run:
    """Put the run's user message in the transcript, mark it running and (after commit) enqueue step 0.
    Saves the run, whether it is new or was waiting."""
    run.status = Run.Status.RUNNING
    run.started_at = timezone.now()
    run.step = 0
    if run._state.adding:
        run.save()
    else:
        run.save(update_fields=["status", "started_at", "step"])
    _append_message(session, role=Message.Role.USER, content=run.input, run=run)
    tenant_slug = session.tenant.slug
    run_id = run.pk
    # Marked before commit: from the moment the run is visibly `running`, the reaper must not take it
    # for an orphan (a rolled-back marker only lapses).
    mark_queued(run_id)

    def announce_and_enqueue():
        events.publish(run_id, events.RUN_STARTED, {"run_id": str(run_id), "session_id": str(session.pk)})
        notify_session(session.pk, run_id)
        _enqueue_step(run_id, 0, tenant_slug)

    transaction.on_commit(announce_and_enqueue)
    return run


def take_steering_locked(session: AgentSession, run: Run) -> list[dict]:
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
        _end_run_locked(
            steer, Run.Status.SUCCEEDED, session=session,
            payload={"run_id": str(steer.pk), "merged_into": str(run.pk), "text": "", "usage": steer.usage},
        )
    return content


def tenant_fill_slots(*, tenant_id) -> int:
    """Start queued runs of other sessions of the tenant while it has room (after a run ended)."""
    started = 0
    active_sessions = Run.objects.filter(tenant_id=tenant_id, status__in=Run.ACTIVE_STATUSES).values("session_id")
    candidates = (
        Run.objects.filter(tenant_id=tenant_id, status=Run.Status.QUEUED)
        .exclude(session_id__in=active_sessions)
        .order_by("created_at")
        .values_list("session_id", flat=True)
    )
    seen = set()
    for session_id in candidates[:200]:
        if session_id in seen:
            continue
        seen.add(session_id)
        if session_advance(session_id=session_id) is None:
            # No room left (or the session got busy meanwhile): the next run end tries again.
            with transaction.atomic():
                if not _tenant_has_capacity_locked(tenant_id):
                    break
            continue
        started += 1
    return started


def _append_message(session: AgentSession, **fields) -> Message:
    seq = session.next_seq
    session.next_seq = seq + 1
    session.save(update_fields=["next_seq", "updated_at"])
    return Message.objects.create(session=session, seq=seq, **fields)


def _enqueue_step(run_id, step: int, tenant_slug: str) -> None:
    from sessions.tasks import run_step

    mark_queued(run_id)
    run_step.apply_async(args=[str(run_id), step], queue=tenant_queue(tenant_slug))


# --- aborting --------------------------------------------------------------------------------------


def run_abort(*, run: Run, reason: str = "aborted by request") -> Run:
    """Abort a run. A queued run (or one waiting for an approval) ends here; a running one ends at its
    step's next stream event."""
    with transaction.atomic():
        session = AgentSession.objects.select_for_update(of=("self",)).select_related("tenant").get(pk=run.session_id)
        locked = Run.objects.select_for_update().get(pk=run.pk)
        _abort_locked(locked, reason, session)
    return locked


def _abort_locked(run: Run, reason: str, session: AgentSession) -> None:
    if run.is_terminal:
        return
    redis_client().set(_abort_key(run.pk), reason, ex=settings.BEAMCLAW["EVENT_STREAM_TTL_SECONDS"])
    if run.status in (Run.Status.QUEUED, Run.Status.AWAITING_APPROVAL):
        _end_run_locked(run, Run.Status.ABORTED, error=reason, session=session)


class _AbortCheck:
    """Polls the abort flag at most every ABORT_CHECK_INTERVAL seconds: a Redis round trip per stream
    event would cost more than the event."""

    def __init__(self, run_id):
        self.key = _abort_key(run_id)
        self.next_check = 0.0

    def __call__(self) -> bool:
        now = time.monotonic()
        if now < self.next_check:
            return False
        self.next_check = now + ABORT_CHECK_INTERVAL
        return bool(redis_client().exists(self.key))


# --- executing a step ------------------------------------------------------------------------------


class _DeltaPublisher:
    """Publishes text deltas, skipping the first `skip` characters (already streamed by a crashed attempt)."""

    def __init__(self, run_id, step: int, skip: int):
        self.run_id = run_id
        self.step = step
        self.skip = skip
        self.seen = 0
        self.parts: list[str] = []

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def __call__(self, text: str) -> None:
        self.parts.append(text)
        start = self.seen
        self.seen += len(text)
        if self.seen <= self.skip:
            return
        events.publish(self.run_id, events.TEXT_DELTA, {"text": text[max(0, self.skip - start):], "step": self.step})


MAX_STEP_ATTEMPTS = 3


def run_step(*, run_id, step: int) -> None:
    lease = RunLease(run_id)
    if not lease.acquire():
        logger.info("run %s step %s is held by another worker; skipping this delivery", run_id, step)
        return
    try:
        attempt = _count_attempt(run_id, step)
        try:
            _execute_step(run_id, step, attempt)
        except Exception as exc:
            # A bug or a broken dependency, not a provider error: the reaper would retry it forever, so
            # give up on the run after a few attempts, saying why.
            logger.exception("run %s step %s failed unexpectedly (attempt %s)", run_id, step, attempt)
            if attempt < MAX_STEP_ATTEMPTS:
                raise
            _finish_failed(run_id, step, f"Internal error while running step {step}: {exc!r}", code="internal_error")
    finally:
        lease.release()


def _count_attempt(run_id, step: int) -> int:
    key = _attempts_key(run_id, step)
    pipe = redis_client().pipeline(transaction=False)
    pipe.incr(key)
    pipe.expire(key, settings.BEAMCLAW["EVENT_STREAM_TTL_SECONDS"])
    return int(pipe.execute()[0])


def _execute_step(run_id, step: int, attempt: int) -> None:
    run = Run.objects.select_related("session__agent", "tenant").filter(pk=run_id).first()
    if run is None or run.status != Run.Status.RUNNING or run.step != step:
        return
    # The step's reply exists: its tool calls are in flight (the reaper re-sent the step); drive them.
    if tool_loop.step_resume(run, step):
        return
    if redis_client().exists(_abort_key(run_id)):
        _finish_aborted(run_id, step, partial_text="")
        return
    if step >= settings.BEAMCLAW["STEP_CAP"]:
        _finish_failed(
            run_id, step, f"Run stopped after {step} steps (step cap {settings.BEAMCLAW['STEP_CAP']}).", code="step_cap"
        )
        return

    agent = run.session.agent
    request = CompletionRequest(
        model=agent.model,
        system=_system_prompt(agent.system_prompt, run.params.get("system")),
        messages=provider_messages(run.session_id),
        max_tokens=min(int(run.params.get("max_tokens") or agent.max_tokens), agent.max_tokens),
        fallbacks=tuple(agent.fallbacks or ()),
        temperature=run.params.get("temperature"),
        top_p=run.params.get("top_p"),
        stop_sequences=tuple(run.params.get("stop") or ()),
        effort=run.params.get("effort"),
        tools=tool_loop.offered_tools(agent),
    )
    provider_name = agent.provider
    # Streaming takes seconds; give the Postgres connection back to the pool meanwhile.
    close_old_connections()

    already_streamed = events.published_text(run_id, step) if attempt > 1 else ""
    publish_delta = _DeltaPublisher(run_id, step, skip=len(already_streamed))

    try:
        completion = get_provider(provider_name).stream(request, on_text=publish_delta, should_abort=_AbortCheck(run_id))
    except Aborted:
        _finish_aborted(run_id, step, partial_text=publish_delta.text)
        return
    except ProviderError as exc:
        _finish_failed(run_id, step, exc.message, code=exc.kind)
        return
    _finish_step(run_id, step, completion)


def _system_prompt(agent_prompt: str, request_system: str | None) -> str:
    return "\n\n".join(part for part in (agent_prompt, request_system) if part)


def provider_messages(session_id) -> list[dict]:
    """The transcript in the shape the Messages API accepts: roles alternate (consecutive turns of one
    role, e.g. after a failed run, are merged) and the first turn is the user's."""
    merged: list[dict] = []
    transcript = Message.objects.filter(session_id=session_id, excluded_reason="").order_by("seq")
    for role, content in transcript.values_list("role", "content"):
        if not content:
            continue
        if merged and merged[-1]["role"] == role:
            merged[-1]["content"] = merged[-1]["content"] + list(content)
        else:
            merged.append({"role": role, "content": list(content)})
    if merged and merged[0]["role"] != Message.Role.USER:
        merged.insert(0, {"role": "user", "content": [{"type": "text", "text": "(conversation start)"}]})
    return merged


def _lock_run(run_id) -> tuple[Run, AgentSession]:
    """Lock a run's session, then the run: the one lock order used everywhere, so no two writers deadlock."""
    session_id = Run.objects.values_list("session_id", flat=True).get(pk=run_id)
    session = AgentSession.objects.select_for_update(of=("self",)).select_related("tenant").get(pk=session_id)
    return Run.objects.select_for_update().get(pk=run_id), session


def _finish_step(run_id, step: int, completion: Completion) -> None:
    with transaction.atomic():
        run, session = _lock_run(run_id)
        if run.status != Run.Status.RUNNING or run.step != step:
            return
        message = _append_message(
            session,
            role=Message.Role.ASSISTANT,
            content=completion.content,
            run=run,
            step=step,
            usage=completion.usage,
        )
        _add_usage(run, session, completion.input_tokens, completion.output_tokens)
        tokens = completion.input_tokens + completion.output_tokens
        transaction.on_commit(lambda: record_tokens(tenant_id=run.tenant_id, tokens=tokens))
        if tool_loop.step_tool_calls(run=run, session=session, step=step, completion=completion):
            return  # the run continues once the tool calls settle
        payload = {
            "run_id": str(run.pk),
            "message": {"seq": message.seq, "role": message.role, "content": message.content},
            "text": completion.text,
            "stop_reason": completion.stop_reason,
            "model": completion.model,
            "usage": run.usage,
        }
        _end_run_locked(run, Run.Status.SUCCEEDED, session=session, payload=payload)


def _finish_failed(run_id, step: int, error: str, code: str = "") -> None:
    with transaction.atomic():
        run, session = _lock_run(run_id)
        if run.status != Run.Status.RUNNING or run.step != step:
            return
        run.error_code = code
        _end_run_locked(run, Run.Status.FAILED, error=error, session=session)


def _finish_aborted(run_id, step: int, partial_text: str) -> None:
    """End an aborted run; what the user already saw of the reply stays in the transcript."""
    with transaction.atomic():
        run, session = _lock_run(run_id)
        if run.is_terminal or run.step != step:
            return
        if partial_text:
            _append_message(
                session,
                role=Message.Role.ASSISTANT,
                content=[{"type": "text", "text": partial_text}],
                run=run,
                step=step,
            )
        reason = redis_client().get(_abort_key(run_id))
        _end_run_locked(run, Run.Status.ABORTED, error=reason.decode() if reason else "aborted", session=session)


def _add_usage(run: Run, session: AgentSession, input_tokens: int, output_tokens: int) -> None:
    run.input_tokens += input_tokens
    run.output_tokens += output_tokens
    session.input_tokens += input_tokens
    session.output_tokens += output_tokens
    session.save(update_fields=["input_tokens", "output_tokens", "updated_at"])


_TERMINAL_EVENT = {
    Run.Status.SUCCEEDED: events.RUN_COMPLETED,
    Run.Status.FAILED: events.RUN_FAILED,
    Run.Status.ABORTED: events.RUN_ABORTED,
}


def _end_run_locked(run: Run, status: str, *, error: str = "", session: AgentSession, payload=None) -> None:
    """Mark a run terminal, announce it after commit, and start the next queued run: the session's own
    now, other sessions' of the tenant after commit if this frees a slot they wait for.
    Caller holds the session and run row locks."""
    tool_loop.run_ending_locked(run, session, status)
    if status == Run.Status.FAILED and not run.messages.filter(role=Message.Role.ASSISTANT).exists():
        # Clients retry failed requests (the openai package twice by default): the model must see the
        # message once, from the retry, not once per attempt. The transcript keeps it, marked.
        run.messages.filter(role=Message.Role.USER).update(excluded_reason=RUN_FAILED_UNANSWERED)
    run.status = status
    run.error = error
    run.finished_at = timezone.now()
    run.save(update_fields=["status", "error", "error_code", "finished_at", "input_tokens", "output_tokens"])
    event_payload = payload or {"run_id": str(run.pk), "error": error, "code": run.error_code, "usage": run.usage}
    run_id = run.pk

    tenant_id = run.tenant_id
    trigger = run.trigger

    def announce():
        events.publish(run_id, _TERMINAL_EVENT[status], event_payload)
        for receiver, result in run_finished.send_robust(sender=Run, run_id=run_id, status=status, trigger=trigger):
            if isinstance(result, Exception):
                logger.error("run_finished receiver %s failed for run %s: %r", receiver, run_id, result)
        tenant_fill_slots(tenant_id=tenant_id)

    transaction.on_commit(announce)
    if session.ephemeral:
        session.status = AgentSession.Status.CLOSED
        session.save(update_fields=["status", "updated_at"])
    _advance_locked(session)


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
                text=reply.text,
            )
    return events.RunEvent(seq=0, event=_TERMINAL_EVENT[run.status], payload=payload)


# --- housekeeping ----------------------------------------------------------------------------------


def reap_orphaned_runs() -> int:
    """Re-enqueue steps whose worker died, and start queued runs whose session has nothing active."""
    running = list(
        Run.objects.filter(status=Run.Status.RUNNING).values_list("pk", "step", "tenant__slug")[:5000]
    )
    orphans = set(unleased([pk for pk, _, _ in running]))
    reaped = 0
    for pk, step, slug in running:
        if pk in orphans and mark_queued(pk, only_if_free=True):
            logger.warning("run %s step %s lost its worker; re-enqueueing", pk, step)
            from sessions.tasks import run_step as run_step_task

            run_step_task.apply_async(args=[str(pk), step], queue=tenant_queue(slug))
            reaped += 1
    stale = timezone.now() - timedelta(seconds=settings.BEAMCLAW["RUN_LEASE_SECONDS"])
    waiting_sessions = (
        Run.objects.filter(status=Run.Status.QUEUED, created_at__lt=stale)
        .exclude(session__runs__status__in=Run.ACTIVE_STATUSES)
        .values_list("session_id", flat=True)
        .distinct()[:1000]
    )
    for session_id in list(waiting_sessions):
        session_advance(session_id=session_id)
    return reaped
