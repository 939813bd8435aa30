"""Compaction: summarizing a session's older turns when its context nears the agent's budget.

A compaction is a row (`sessions.models.Compaction`): the model's summary of every message before
`first_kept_seq` (and of the compaction before it). From then on the model sees that summary as its first
turn, then the messages from `first_kept_seq` on (context.py); the transcript keeps every message.

Invariants and the reasons for them:

- The cut never separates a tool_use from its tool_result: `first_kept_seq` is never a user message that
  carries tool results (whose tool_use is in the assistant message before it). It is a user turn of its
  own, or, when that would leave too much unsummarized (one long run of tool calls), an assistant message.
- At least `keep_recent_tokens` of the most recent transcript stay verbatim, and each compaction cuts
  after the one before it, so the latest compaction is the one with the highest `first_kept_seq`.
- One compaction of a session at a time: a lease (`bc:session:<id>:compaction`) keeps a second one from
  paying for a summary that would be thrown away, and the write checks, under the session row lock, that
  the compaction it summarized on top of is still the latest (if not, its result is dropped).
- Automatic compaction (`compaction_if_needed`, before each step of a run) never fails the run: a
  summarizing call that fails is logged, the step goes on with the full context (the provider then says
  if it is too long), and the session is not compacted automatically again for AUTO_PAUSE_SECONDS, so a
  failing summarizer is not paid for on every step.
- What the summarizing call costs counts like any model call: the run's and the session's token
  counters (a manual compaction has no run: the session's), and the tenant's daily budget.

The context estimate runs before every step, so it is cheap: the input and output tokens the provider
reported for the latest reply (system prompt and tool definitions included), plus about one token per
CHARS_PER_TOKEN characters of what was added since; a character count of the whole context where no reply
has been counted since the latest compaction.
"""

import json
import logging
import math
import time
import uuid
from dataclasses import dataclass

from django.conf import settings
from django.db import close_old_connections, transaction
from django.db.models import F
from rest_framework.exceptions import ValidationError

from beamclaw_project.errors import Conflict, DomainError
from beamclaw_project.infra.draining import draining
from beamclaw_project.infra.leases import Lease
from beamclaw_project.infra.metrics import tokens_record
from beamclaw_project.infra.outages import outage_of
from beamclaw_project.infra.queues import WORK_PRIORITY, tenant_queue
from beamclaw_project.infra.redis import async_redis, redis_client
from beamclaw_project.infra.tasks import task_send
from sessions import events
from sessions.models import AgentSession, Compaction, Message, Run
from sessions.providers.base import Aborted, CompletionRequest, ProviderError
from sessions.providers.chain import complete
from sessions.runs.budget import check_token_budget, record_tokens
from sessions.runs.context import TranscriptView, latest_compaction, summary_turn, transcript_view, turns_merge
from sessions.runs.kernel import AbortCheck, session_lock

logger = logging.getLogger(__name__)

COMPACT_TASK = "sessions.compact_session"

THRESHOLD_RANGE = (1_000, 2_000_000)
KEEP_RECENT_RANGE = (0, 1_000_000)
CONFIG_KEYS = ("enabled", "threshold_tokens", "keep_recent_tokens")

CHARS_PER_TOKEN = 4
# What an image costs, roughly (Anthropic: about width x height / 750 tokens, ~1600 for a large one).
IMAGE_TOKENS = 1_600
SUMMARY_MAX_TOKENS = 4_096
# In the summarizing request a tool result keeps its first characters only: the summary needs what was
# found, not every line of it, and whole results would make the summary cost as much as the context.
TOOL_RESULT_CHARS = 2_000
TOOL_INPUT_CHARS = 500
# After a failed automatic compaction, how long steps of the session go on without trying again.
AUTO_PAUSE_SECONDS = 300
# How long a manual request's outcome waits in Redis for the request that asked for it.
RESULT_TTL_SECONDS = 600

SUMMARY_SYSTEM_PROMPT = """You compact conversations between a user and an AI agent. The agent will continue the \
conversation seeing only your summary in place of the messages you are given, followed by the most recent \
messages, so the summary must carry everything the agent needs to continue without asking again:

- the user's goals, requests and preferences, and any constraints they stated;
- decisions made and why; facts, names, numbers, identifiers, file paths, URLs and commands that matter;
- what the agent did (tools it called and what they showed) and what came of it;
- open questions and the tasks still to do, with where they stand.

A summary of an even earlier part may open the conversation: fold it into yours. Write the summary in the \
language of the conversation, as plain notes, without a preamble or a closing remark, and leave out \
pleasantries and anything settled that no longer matters."""

SUMMARY_INSTRUCTION = (
    "Summarize the conversation so far for the agent that will continue it, following your instructions. "
    "Reply with the summary only."
)


class NothingToCompact(Conflict):
    code = "nothing_to_compact"


class CompactionBusy(Conflict):
    """A run of the session is active, or another compaction of it is under way."""

    code = "compaction_busy"


class CompactionFailed(DomainError):
    """The summarizing call failed (or returned no summary); the session is unchanged."""

    status = 502
    code = "compaction_failed"


# --- configuration -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CompactionConfig:
    enabled: bool
    threshold_tokens: int
    keep_recent_tokens: int


def _defaults() -> tuple[int, int]:
    return (
        int(settings.BEAMCLAW["COMPACTION_THRESHOLD_TOKENS"]),
        int(settings.BEAMCLAW["COMPACTION_KEEP_RECENT_TOKENS"]),
    )


def compaction_config(agent) -> CompactionConfig:
    """The agent's settings over the deployment's defaults."""
    threshold, keep_recent = _defaults()
    value = agent.compaction or {}
    return CompactionConfig(
        enabled=value.get("enabled", True),
        threshold_tokens=value.get("threshold_tokens", threshold),
        keep_recent_tokens=value.get("keep_recent_tokens", keep_recent),
    )


def _int_in(value, key: str, bounds: tuple[int, int]) -> int:
    low, high = bounds
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValidationError(f"compaction.{key} must be an integer from {low} to {high} (tokens); got {value!r}.")
    return value


def compaction_config_clean(value) -> dict:
    """`Agent.compaction` as the API takes it: {"enabled"?: bool, "threshold_tokens"?: int,
    "keep_recent_tokens"?: int}; keys left out follow the deployment's defaults. Raises ValidationError
    naming the key at fault."""
    if not isinstance(value, dict):
        raise ValidationError(
            'Must be an object like {"threshold_tokens": 150000, "keep_recent_tokens": 20000} or {"enabled": false}.'
        )
    unknown = sorted(set(value) - set(CONFIG_KEYS))
    if unknown:
        raise ValidationError(f"Unknown key compaction.{unknown[0]}; the keys are {', '.join(CONFIG_KEYS)}.")
    if "enabled" in value and not isinstance(value["enabled"], bool):
        raise ValidationError(f"compaction.enabled must be true or false; got {value['enabled']!r}.")
    default_threshold, default_keep = _defaults()
    threshold = _int_in(value["threshold_tokens"], "threshold_tokens", THRESHOLD_RANGE) if "threshold_tokens" in value else default_threshold
    keep = _int_in(value["keep_recent_tokens"], "keep_recent_tokens", KEEP_RECENT_RANGE) if "keep_recent_tokens" in value else default_keep
    if keep >= threshold:
        raise ValidationError(
            f"compaction.keep_recent_tokens ({keep}) must be below compaction.threshold_tokens ({threshold}): "
            "what stays verbatim after a compaction must fit under the threshold that triggers one."
        )
    return dict(value)


# --- sizes -------------------------------------------------------------------------------------------


def _block_chars(block) -> int:
    if not isinstance(block, dict):
        return len(str(block))
    kind = block.get("type")
    if kind == "text":
        return len(block.get("text", ""))
    if kind == "tool_use":
        return len(block.get("name", "")) + len(json.dumps(block.get("input", {})))
    if kind == "tool_result":
        inner = block.get("content", "")
        return len(inner) if isinstance(inner, str) else sum(_block_chars(b) for b in inner or ())
    if kind in ("image", "document"):
        return IMAGE_TOKENS * CHARS_PER_TOKEN
    return len(json.dumps(block))


def content_tokens(content) -> int:
    """About how many tokens a message's content blocks take."""
    return math.ceil(sum(_block_chars(b) for b in content or ()) / CHARS_PER_TOKEN)


def _text_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def _reported_context(usage: dict) -> int:
    """The context a reply was given plus the reply, from what the provider reported (cached input counts:
    Anthropic reports it apart from `input_tokens`)."""
    return sum(int(usage.get(k) or 0) for k in (
        "input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens", "output_tokens",
    ))


def context_tokens_estimate(*, session_id, system: str = "", view: TranscriptView | None = None) -> int:
    """About how many tokens the session's next model call will take (see the module docstring); from
    `view` when the caller has read it already."""
    view = view or transcript_view(session_id)
    compaction = view.compaction
    # A reply from before the compaction was counted with the older turns in its context.
    counted = [
        m for m in view.messages
        if m.role == Message.Role.ASSISTANT and m.usage and (compaction is None or m.created_at > compaction.created_at)
    ]
    last = counted[-1] if counted else None
    if last is not None and _reported_context(last.usage) > 0:
        return _reported_context(last.usage) + sum(content_tokens(m.content) for m in view.messages if m.seq > last.seq)
    tokens = _text_tokens(system) + sum(content_tokens(m.content) for m in view.messages)
    if compaction is not None:
        tokens += content_tokens(summary_turn(compaction.summary)["content"])
    return tokens


# --- choosing the cut --------------------------------------------------------------------------------


@dataclass
class CompactionPlan:
    previous: Compaction | None
    older: list[tuple[str, list]]  # (role, content) of the messages to summarize, in order
    first_kept_seq: int
    older_tokens: int  # the older messages and the previous summary, which the new summary replaces


def _continues_tool_use(role: str, content) -> bool:
    return role == Message.Role.USER and any(isinstance(b, dict) and b.get("type") == "tool_result" for b in content)


def compaction_plan(*, session_id, keep_recent_tokens: int) -> CompactionPlan | None:
    """Where to cut the session's visible transcript, or None when there is nothing worth summarizing."""
    previous = latest_compaction(session_id)
    rows = Message.objects.filter(session_id=session_id, excluded_reason="").order_by("seq")
    if previous is not None:
        rows = rows.filter(seq__gte=previous.first_kept_seq)
    rows = [(seq, role, content) for seq, role, content in rows.values_list("seq", "role", "content") if content]
    sizes = [content_tokens(content) for _, _, content in rows]
    # The latest index from which the rest holds at least keep_recent_tokens: cut there or before it.
    latest, kept = -1, 0
    for index in range(len(rows) - 1, -1, -1):
        kept += sizes[index]
        if kept >= keep_recent_tokens:
            latest = index
            break
    boundaries = [i for i in range(1, latest + 1) if not _continues_tool_use(rows[i][1], rows[i][2])]
    if not boundaries:
        return None
    cut = boundaries[-1]
    # Whole turns summarize better: cut at the start of the latest user turn instead, unless that would
    # summarize less than half as much (a long run of tool calls has no user turn to cut at).
    turn_starts = [i for i in boundaries if rows[i][1] == Message.Role.USER]
    if turn_starts and 2 * sum(sizes[: turn_starts[-1]]) >= sum(sizes[:cut]):
        cut = turn_starts[-1]
    older_tokens = sum(sizes[:cut])
    if previous is not None:
        older_tokens += content_tokens(summary_turn(previous.summary)["content"])
    return CompactionPlan(
        previous=previous, older=[(role, content) for _, role, content in rows[:cut]],
        first_kept_seq=rows[cut][0], older_tokens=older_tokens,
    )


# --- summarizing -------------------------------------------------------------------------------------


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}… [{len(text) - limit} more characters]"


def _as_text(block) -> dict | None:
    """A block as text for the summarizing request: tool blocks would need the tool definitions, and
    whole tool results would make the summary cost as much as the context."""
    if not isinstance(block, dict):
        return None
    kind = block.get("type")
    if kind == "text":
        return block if block.get("text") else None
    if kind == "tool_use":
        arguments = _clip(json.dumps(block.get("input", {}), ensure_ascii=False), TOOL_INPUT_CHARS)
        return {"type": "text", "text": f"[called the tool {block.get('name')} with {arguments}]"}
    if kind == "tool_result":
        inner = block.get("content", "")
        text = inner if isinstance(inner, str) else "".join(
            b.get("text", "") for b in inner or () if isinstance(b, dict) and b.get("type") == "text"
        )
        label = "tool error" if block.get("is_error") else "tool result"
        return {"type": "text", "text": f"[{label}: {_clip(text, TOOL_RESULT_CHARS)}]"}
    if kind in ("image", "document"):
        return {"type": "text", "text": f"[{kind}]"}
    return None  # thinking blocks and the like: the reply they led to says what matters


def summary_request(agent, plan: CompactionPlan) -> CompletionRequest:
    rows = [(role, [t for t in map(_as_text, content) if t is not None]) for role, content in plan.older]
    first = [summary_turn(plan.previous.summary)] if plan.previous is not None else []
    turns = turns_merge(rows, first=first)
    instruction = {"role": Message.Role.USER.value, "content": [{"type": "text", "text": SUMMARY_INSTRUCTION}]}
    turns = turns_merge([(instruction["role"], instruction["content"])], first=turns)
    return CompletionRequest(
        model=agent.model, system=SUMMARY_SYSTEM_PROMPT, messages=turns,
        max_tokens=min(agent.max_tokens, SUMMARY_MAX_TOKENS),
    )


def _lease_key(session_id) -> str:
    return f"bc:session:{session_id}:compaction"


def session_compact(
    *, session: AgentSession, trigger: str, should_abort, run: Run | None = None, tokens_before: int | None = None
) -> Compaction:
    """Summarize the session's older turns now. Raises CompactionBusy (another compaction is under way),
    NothingToCompact, CompactionFailed (the session is unchanged), Aborted (should_abort said so)."""
    agent = session.agent
    config = compaction_config(agent)
    lease = Lease(_lease_key(session.pk))
    if not lease.acquire():
        raise CompactionBusy("Another compaction of this session is under way; it shows in the session's compactions when done.")
    try:
        if tokens_before is None:
            tokens_before = context_tokens_estimate(session_id=session.pk, system=agent.system_prompt)
        plan = compaction_plan(session_id=session.pk, keep_recent_tokens=config.keep_recent_tokens)
        if plan is None:
            raise NothingToCompact(
                f"Nothing to compact: the context (about {tokens_before} tokens) has no turn to summarize that would "
                f"leave the most recent {config.keep_recent_tokens} tokens (the agent's compaction.keep_recent_tokens) "
                "verbatim and no tool call apart from its result."
            )
        request = summary_request(agent, plan)
        # The call takes seconds; give the Postgres connection back to the pool meanwhile.
        close_old_connections()
        started = time.monotonic()
        try:
            completion = complete(agent, request, on_text=lambda text: None, should_abort=should_abort)
        except ProviderError as exc:
            raise CompactionFailed(f"The summarizing call to the model failed: {exc.message} The session is unchanged.")
        usage = {**completion.usage, "duration_ms": int((time.monotonic() - started) * 1000)}
        summary = completion.text.strip()
        if not summary:
            with transaction.atomic():
                _tokens_spent_locked(session_lock(session.pk), run, usage)
            raise CompactionFailed("The model returned no summary (no text); the session is unchanged.")
        tokens_after = max(0, tokens_before - plan.older_tokens) + content_tokens(summary_turn(summary)["content"])
        return _record(
            session_id=session.pk, plan=plan, summary=summary, trigger=trigger, run=run, model=completion.model,
            tokens_before=tokens_before, tokens_after=tokens_after, usage=usage,
        )
    finally:
        lease.release()


def _tokens_spent_locked(session: AgentSession, run: Run | None, usage: dict) -> None:
    """Count a summarizing call's tokens for the run (if any), the session and the tenant's budget.
    Caller holds the session row lock."""
    input_tokens, output_tokens = int(usage.get("input_tokens") or 0), int(usage.get("output_tokens") or 0)
    session.input_tokens += input_tokens
    session.output_tokens += output_tokens
    session.save(update_fields=["input_tokens", "output_tokens", "updated_at"])
    if run is not None:
        Run.objects.filter(pk=run.pk).update(
            input_tokens=F("input_tokens") + input_tokens, output_tokens=F("output_tokens") + output_tokens
        )
    tenant_id, slug = session.tenant_id, session.tenant.slug
    transaction.on_commit(lambda: record_tokens(tenant_id=tenant_id, tokens=input_tokens + output_tokens))
    transaction.on_commit(lambda: tokens_record(tenant=slug, input_tokens=input_tokens, output_tokens=output_tokens))


def _record(*, session_id, plan: CompactionPlan, summary: str, trigger: str, run: Run | None, model: str,
            tokens_before: int, tokens_after: int, usage: dict) -> Compaction:
    with transaction.atomic():
        session = session_lock(session_id)
        _tokens_spent_locked(session, run, usage)  # spent whether or not the compaction is kept
        latest = latest_compaction(session_id)
        raced = (latest.pk if latest else None) != (plan.previous.pk if plan.previous else None)
        compaction = None if raced else Compaction.objects.create(
            session_id=session_id, first_kept_seq=plan.first_kept_seq, summary=summary, trigger=trigger,
            tokens_before=tokens_before, tokens_after=tokens_after, usage=usage, model=model,
        )
    if compaction is None:
        raise CompactionBusy("Another compaction of this session finished first; this one was dropped.")
    logger.info(
        "compacted session %s (%s) before #%s: about %s -> %s context tokens; the summary cost %s input and %s "
        "output tokens in %s ms", session_id, trigger, plan.first_kept_seq, tokens_before, tokens_after,
        usage.get("input_tokens"), usage.get("output_tokens"), usage.get("duration_ms"),
    )
    return compaction


def compaction_as_dict(compaction: Compaction) -> dict:
    return {
        "id": compaction.pk,
        "session": str(compaction.session_id),
        "first_kept_seq": compaction.first_kept_seq,
        "trigger": compaction.trigger,
        "tokens_before": compaction.tokens_before,
        "tokens_after": compaction.tokens_after,
        "usage": compaction.usage,
        "model": compaction.model,
        "summary": compaction.summary,
        "created_at": compaction.created_at.isoformat(),
    }


# --- automatic: before each step ---------------------------------------------------------------------


def _pause_key(session_id) -> str:
    return f"bc:session:{session_id}:compaction-paused"


def compaction_due(*, agent, session_id, view: TranscriptView) -> bool:
    """Whether a step with this view would compact its session first (compaction_if_needed), a pause after a
    failed compaction aside."""
    return _tokens_over_threshold(agent, session_id, view) is not None


def _tokens_over_threshold(agent, session_id, view: TranscriptView) -> int | None:
    """The context's estimated tokens when the agent compacts and they are over its threshold, else None."""
    config = compaction_config(agent)
    if not config.enabled:
        return None
    tokens = context_tokens_estimate(session_id=session_id, system=agent.system_prompt, view=view)
    return tokens if tokens > config.threshold_tokens else None


def compaction_if_needed(*, run, agent, view: TranscriptView) -> Compaction | None:
    """Before a step: compact the run's session when its context (`view`, read for the step) is over the
    agent's threshold. Never raises for the compaction's own failures (see the module docstring); an outage
    of Redis or Postgres goes up, so the step pauses as it does for any outage."""
    tokens = _tokens_over_threshold(agent, run.session_id, view)
    if tokens is None or redis_client().exists(_pause_key(run.session_id)):
        return None
    abort_check = AbortCheck(run.pk)
    try:
        compaction = session_compact(
            session=run.session, trigger=Compaction.Trigger.AUTO, run=run, tokens_before=tokens,
            should_abort=lambda: draining() or abort_check(),
        )
    except Aborted:
        return None  # the step's own call stops too, and says why
    except (NothingToCompact, CompactionBusy) as exc:
        logger.info("session %s is over its compaction threshold (%s > %s tokens) but was not compacted: %s",
                    run.session_id, tokens, compaction_config(agent).threshold_tokens, exc.message)
        return None
    except Exception as exc:
        if outage_of(exc) is not None:
            raise
        logger.warning("automatic compaction of session %s failed; the step goes on with the whole context and "
                       "the session is not compacted again for %s s: %s", run.session_id, AUTO_PAUSE_SECONDS,
                       getattr(exc, "message", repr(exc)), exc_info=not isinstance(exc, CompactionFailed))
        redis_client().set(_pause_key(run.session_id), "1", ex=AUTO_PAUSE_SECONDS)
        return None
    events.publish(run.pk, events.COMPACTION, {**compaction_as_dict(compaction), "step": run.step})
    return compaction


# --- manual: POST /api/sessions/{id}/compact/ and WebSocket sessions.compact ---------------------------


def compaction_result_key(request_id: str) -> str:
    return f"bc:compaction:{request_id}:result"


# How long a manual request (REST or WebSocket) waits for the worker's outcome before telling the caller
# it is still running; a summary of a long transcript takes seconds, more while the tenant's queue is busy.
COMPACT_WAIT_SECONDS = 120
# Short blocking reads: the Redis client's socket timeout would end a long one.
_WAIT_SLICE_SECONDS = 2.0


def compaction_pending_message(session_id) -> str:
    return (f"The compaction is still running after {COMPACT_WAIT_SECONDS} s; it shows in "
            f"GET /api/sessions/{session_id}/compactions/ when done.")


def compaction_outcome_wait(request_id: str) -> dict | None:
    """The worker's outcome of a compaction request (compaction_run_requested), or None after
    COMPACT_WAIT_SECONDS. For sync callers, which should give back their database connection first."""
    deadline = time.monotonic() + COMPACT_WAIT_SECONDS
    while (remaining := deadline - time.monotonic()) > 0:
        popped = redis_client().blpop([compaction_result_key(request_id)], timeout=min(_WAIT_SLICE_SECONDS, max(remaining, 0.1)))
        if popped is not None:
            return json.loads(popped[1])
    return None


async def compaction_outcome_await(request_id: str) -> dict | None:
    """compaction_outcome_wait without holding a thread, for the WebSocket."""
    deadline = time.monotonic() + COMPACT_WAIT_SECONDS
    while (remaining := deadline - time.monotonic()) > 0:
        popped = await async_redis().blpop([compaction_result_key(request_id)], timeout=min(_WAIT_SLICE_SECONDS, max(remaining, 0.1)))
        if popped is not None:
            return json.loads(popped[1])
    return None


def compaction_request(*, session: AgentSession) -> str:
    """Ask a worker to compact the session now; returns the id under which the outcome will be pushed
    (compaction_result_key). Refuses at once (domain errors) what needs no model: a session with an active
    run (CompactionBusy), one with nothing to compact, a tenant whose token budget is used up."""
    check_token_budget(tenant=session.tenant)
    active = Run.objects.filter(session=session, status__in=Run.ACTIVE_STATUSES).values_list("pk", flat=True).first()
    if active is not None:
        raise CompactionBusy(
            f"The session has an active run ({active}); wait for it to finish or abort it "
            f"(POST /api/runs/{active}/abort/), then compact."
        )
    config = compaction_config(session.agent)
    if compaction_plan(session_id=session.pk, keep_recent_tokens=config.keep_recent_tokens) is None:
        tokens = context_tokens_estimate(session_id=session.pk, system=session.agent.system_prompt)
        raise NothingToCompact(
            f"Nothing to compact: the context (about {tokens} tokens) is within the most recent "
            f"{config.keep_recent_tokens} tokens that stay verbatim (the agent's compaction.keep_recent_tokens), "
            "or has no turn to cut at."
        )
    request_id = uuid.uuid4().hex
    # A request that is lost with its worker is not redelivered (the task is acknowledged on receipt):
    # the caller hears nothing within its wait and may ask again, which costs less than a second summary.
    task_send(COMPACT_TASK, [str(session.pk), request_id], queue=tenant_queue(session.tenant.slug), priority=WORK_PRIORITY)
    return request_id


def compaction_run_requested(*, session_id, request_id: str) -> None:
    """The worker's side of a manual compaction: compact, then push the outcome for the waiting request
    as {"status": HTTP status, "compaction": {...}} or {"status", "code", "message"}."""
    session = AgentSession.objects.select_related("agent", "tenant").filter(pk=session_id).first()
    try:
        if session is None:
            raise NothingToCompact("The session was deleted.")
        compaction = session_compact(session=session, trigger=Compaction.Trigger.MANUAL, should_abort=draining)
        outcome = {"status": 200, "compaction": compaction_as_dict(compaction)}
    except DomainError as exc:
        outcome = {"status": exc.status, "code": exc.code, "message": exc.message}
    except Aborted:
        outcome = {"status": 503, "code": "unavailable",
                   "message": "The worker compacting the session is shutting down; ask again in a moment."}
    key = compaction_result_key(request_id)
    pipe = redis_client().pipeline(transaction=False)
    pipe.rpush(key, json.dumps(outcome))
    pipe.expire(key, RESULT_TTL_SECONDS)
    pipe.execute()
