"""Sub-agents: a session hands a task to a child session, and hears back when the child's run ends.

- `subagent_spawn` creates the child `agent:<agent>:subagent:<8 hex>` (parent = the calling session,
  spawned_by = the calling run) and submits the task as its first run (trigger `subagent`) on the
  tenant's queue. It returns at once: no worker thread waits for the child.
- A child's run that ends (succeeded, failed, aborted) and was started by its parent (trigger `subagent`:
  the spawn's task, or a `sessions_send` message) is announced into the parent session as a tagged user
  message, in queue mode `steer`: an active parent run takes it in at its next step boundary, else it
  starts a parent run.
- Exactly once, durably: `Run.announced_at` is set in the transaction that submits the announcement,
  under the child run's row lock. The run_finished signal announces at once; `subagents_sweep` (workers'
  housekeeping) announces what a worker killed between the run's commit and the signal left behind.
- Depth 1 (a sub-agent cannot spawn), at most `SUBAGENTS_MAX_RUNNING` children with a queued or active
  run per parent, and a run that ends aborted aborts the runs of the sessions it spawned (their results are
  then not announced: the parent's user stopped that work).
- Visibility "tree": a session sees itself, its parent and its children; nothing else of the tenant.

Row locks here are FOR NO KEY UPDATE: they exclude each other and the engine's locks all the same, but
not the KEY SHARE locks that foreign-key checks take at commit (a row inserted elsewhere that refers to
the session or run), which would otherwise wait on them.

Lock order: the announcement locks the child's RUN row (never the child's session) and then, through
run_submit, the parent's session and the tenant. Spawning locks the parent session, then (run_submit) the
new child's session and the tenant. The engine locks a session before its runs and a tenant last, so no
path waits for a child session while holding the parent's, and none holds a parent lock while waiting for
a child run.
"""

import logging
import secrets

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import OuterRef, Q, Subquery
from django.utils import timezone

from beamclaw_project.errors import Conflict, Forbidden, InvalidInput, LimitExceeded, NotFound
from sessions.content import content_parse
from sessions.models import AgentSession, Message, Run
from sessions.runs import UNSTREAMED_PARAM, SessionClosed, run_abort, run_submit
from tenants.models import Agent

logger = logging.getLogger(__name__)

SUBAGENT_KEY_PART = "subagent"
# What the model reads of a child's reply in an announcement; the whole reply is in the child's transcript.
ANNOUNCE_MAX_CHARS = 8000
HISTORY_MESSAGE_MAX_CHARS = 2000
HISTORY_MAX_CHARS = 16000
PARENT_ABORTED = "aborted with the parent run that spawned it"
PENDING_STATUSES = (Run.Status.QUEUED, *Run.ACTIVE_STATUSES)

CHILD_SYSTEM_PROMPT = (
    "You are a sub-agent: session {parent} gave you the task in the first message. Work on it with your "
    "tools and end with a final reply that states the result; that reply is sent back to session {parent}. "
    "You cannot spawn sub-agents yourself."
)


class SubagentDepthExceeded(Forbidden):
    code = "subagent_depth"


class SubagentEphemeralParent(Conflict):
    code = "subagent_ephemeral_parent"


class SubagentCapReached(Conflict):
    code = "subagent_cap"


class SubagentAgentUnknown(InvalidInput):
    field = "agent"


class SessionNotInTree(NotFound):
    field = "session"


class SubagentCallerEnded(Conflict):
    """The run that asked for the spawn has ended (e.g. it was aborted meanwhile)."""


def max_running_children() -> int:
    return int(settings.BEAMCLAW["SUBAGENTS_MAX_RUNNING"])


def is_subagent(session: AgentSession) -> bool:
    return session.parent_id is not None or f":{SUBAGENT_KEY_PART}:" in session.key


def session_ref(session: AgentSession) -> str:
    """How a session is named to the model: its label with its key, or its key."""
    return f'"{session.label}" ({session.key})' if session.label else session.key


# --- spawning ------------------------------------------------------------------------------------


def subagent_spawn(
    *, parent: AgentSession, task: str, agent_slug: str | None = None, label: str = "", spawned_by_id=None
) -> tuple[AgentSession, Run]:
    """Create a child session of `parent` and start `task` as its first run; returns (child, run).

    Raises SubagentDepthExceeded (the parent is a sub-agent), SubagentEphemeralParent, SubagentAgentUnknown,
    SubagentCapReached, SubagentCallerEnded, SessionClosed (the parent is closed), LimitExceeded (the
    tenant's token budget), ContentInvalid (a blank task)."""
    if is_subagent(parent):
        raise SubagentDepthExceeded("sub-agents cannot spawn sub-agents (depth limit 1)")
    if parent.ephemeral:
        # Its request ends with this run and the session closes: the child's result would have nowhere to go.
        raise SubagentEphemeralParent(
            "sub-agents need a persistent session to report back to; this one lasts only for its request "
            "(on /v1/chat/completions, send `user` or the X-Session-Key header)"
        )
    if agent_slug and agent_slug != parent.agent.slug:
        agent = Agent.objects.filter(tenant_id=parent.tenant_id, slug=agent_slug).first()
        if agent is None:
            known = ", ".join(Agent.objects.filter(tenant_id=parent.tenant_id).values_list("slug", flat=True)[:50])
            raise SubagentAgentUnknown(f"there is no agent {agent_slug!r} in this tenant (agents: {known})")
    else:
        agent = parent.agent
    cap = max_running_children()
    with transaction.atomic():
        # The parent's row lock serializes its spawns (parallel tool calls of one reply), so the cap holds.
        locked = AgentSession.objects.select_for_update(of=("self",), no_key=True).get(pk=parent.pk)
        if locked.status == AgentSession.Status.CLOSED:
            raise SessionClosed(f"Session {locked.key} is closed.")
        if spawned_by_id is not None and Run.objects.filter(pk=spawned_by_id, status__in=Run.TERMINAL_STATUSES).exists():
            raise SubagentCallerEnded("the run that asked for this sub-agent has ended; nothing was spawned")
        running = (
            AgentSession.objects.filter(parent=locked, runs__status__in=PENDING_STATUSES).distinct().count()
        )
        if running >= cap:
            raise SubagentCapReached(
                f"this session already has {running} running sub-agents, the cap is {cap} "
                f"(setting SUBAGENTS_MAX_RUNNING); wait for one to finish (its result is announced here) "
                f"or spawn later"
            )
        child = _child_create(locked, agent, label, spawned_by_id)
        run = run_submit(
            session=child,
            content=content_parse(task, where="task"),
            trigger=Run.Trigger.SUBAGENT,
            params=_child_run_params(locked.key),
        )
    logger.info("session %s spawned sub-agent %s (run %s)", parent.key, child.key, run.pk)
    return child, run


def _child_run_params(parent_key: str) -> dict:
    """A child's run: told who it works for, and unstreamed (its reply is announced whole to the parent; a
    reader that follows it meanwhile still gets its deltas as they come: sessions/runs/delta_window.py)."""
    return {"system": CHILD_SYSTEM_PROMPT.format(parent=parent_key), UNSTREAMED_PARAM: True}


def _child_create(parent: AgentSession, agent: Agent, label: str, spawned_by_id) -> AgentSession:
    for _ in range(5):
        key = f"agent:{agent.slug}:{SUBAGENT_KEY_PART}:{secrets.token_hex(4)}"
        try:
            with transaction.atomic():
                return AgentSession.objects.create(
                    tenant_id=parent.tenant_id, agent=agent, key=key, parent=parent,
                    spawned_by_id=spawned_by_id, label=label,
                )
        except IntegrityError:  # 4 random bytes met an existing key: draw again
            continue
    raise Conflict("could not find a free sub-agent session key; try again")


# --- the tree ------------------------------------------------------------------------------------


def session_in_tree(*, caller: AgentSession, ref: str, include_self: bool = True) -> AgentSession:
    """The session `ref` (an id or a key) if it is the caller, its parent or one of its children, within
    the caller's tenant. Anything else is SessionNotInTree, worded the same whether it exists or not."""
    ref = (ref or "").strip()
    scope = AgentSession.objects.select_related("agent", "tenant").filter(tenant_id=caller.tenant_id)
    tree = Q(parent_id=caller.pk)
    if caller.parent_id:
        tree |= Q(pk=caller.parent_id)
    if include_self:
        tree |= Q(pk=caller.pk)
    try:
        by_ref = Q(pk=AgentSession._meta.pk.to_python(ref))
    except ValidationError:  # not an id: a key
        by_ref = Q(key=ref)
    found = scope.filter(tree).filter(by_ref).first()
    if found is None:
        whom = "yourself, your parent and your sub-agents" if include_self else "your parent and your sub-agents"
        raise SessionNotInTree(f"no session {ref!r} among {whom} (sessions_list shows them)")
    return found


def _summary(session: AgentSession, latest_status: str | None) -> dict:
    return {
        "id": str(session.pk),
        "key": session.key,
        "label": session.label,
        "agent": session.agent.slug,
        "status": latest_status or "idle",
        "updated_at": session.updated_at.isoformat(),
    }


def session_tree(*, session: AgentSession, limit: int = 50) -> dict:
    """The caller's parent and its newest `limit` children, each with its latest run's status."""
    latest = Run.objects.filter(session=OuterRef("pk")).order_by("-created_at").values("status")[:1]
    children = (
        AgentSession.objects.filter(parent_id=session.pk).select_related("agent")
        .annotate(latest_status=Subquery(latest)).order_by("-created_at")[:limit]
    )
    parent = None
    if session.parent_id:
        found = (
            AgentSession.objects.filter(pk=session.parent_id).select_related("agent")
            .annotate(latest_status=Subquery(latest)).first()
        )
        parent = _summary(found, found.latest_status) if found else None
    return {
        "session": {"id": str(session.pk), "key": session.key, "label": session.label},
        "parent": parent,
        "children": [_summary(child, child.latest_status) for child in children],
    }


def _message_text(message: Message) -> str:
    parts = []
    for block in message.content if isinstance(message.content, list) else []:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text":
            parts.append(block.get("text", ""))
        elif kind == "tool_use":
            parts.append(f"[called tool {block.get('name', '?')}]")
        elif kind == "tool_result":
            parts.append("[tool result]")
        elif kind == "image":
            parts.append("[image]")
    text = "\n".join(part for part in parts if part)
    if len(text) > HISTORY_MESSAGE_MAX_CHARS:
        text = text[:HISTORY_MESSAGE_MAX_CHARS] + " ... (truncated)"
    return text


def session_history_text(*, session: AgentSession, limit: int = 20) -> str:
    """The session's newest `limit` messages as compact text, oldest first, at most HISTORY_MAX_CHARS
    (the newest kept)."""
    messages = list(Message.objects.filter(session=session).order_by("-seq")[:limit])
    lines: list[str] = []
    used = 0
    for message in messages:
        line = f"#{message.seq} {message.role}: {_message_text(message)}"
        if used + len(line) > HISTORY_MAX_CHARS:
            lines.append("(older messages left out)")
            break
        lines.append(line)
        used += len(line)
    latest = Run.objects.filter(session=session).order_by("-created_at").values_list("status", flat=True).first()
    header = f"session {session_ref(session)}, latest run: {latest or 'none'}"
    return "\n".join([header, *reversed(lines)]) if lines else f"{header}\n(no messages yet)"


def session_send(*, caller: AgentSession, ref: str, message: str) -> Run:
    """Send `message` into the caller's parent or one of its children, fire-and-forget. To a child it is
    a turn of its own (its reply is announced back); to the parent it steers like an announcement."""
    target = session_in_tree(caller=caller, ref=ref, include_self=False)
    content_parse(message, where="message")  # blank text is refused here, by name, not by the provider
    if target.pk == caller.parent_id:
        text = f"[message from sub-agent {session_ref(caller)}]\n{message}"
        mode, params = AgentSession.QueueMode.STEER, None
    else:
        text = f"[message from parent session {caller.key}]\n{message}"
        mode, params = None, _child_run_params(caller.key)
    return run_submit(
        session=target, content=[{"type": "text", "text": text}], trigger=Run.Trigger.SUBAGENT, mode=mode,
        params=params,
    )


# --- announcing ----------------------------------------------------------------------------------


def _announcement(child: AgentSession, run: Run) -> str:
    head = f"[sub-agent {session_ref(child)} finished: {run.status}]"
    reply = run.messages.filter(role=Message.Role.ASSISTANT).order_by("-seq").first()
    text = reply.text if reply is not None else ""
    if len(text) > ANNOUNCE_MAX_CHARS:
        text = text[:ANNOUNCE_MAX_CHARS] + f"\n... (truncated; sessions_history {child.key} shows all of it)"
    if run.status == Run.Status.SUCCEEDED:
        return f"{head}\n{text or '(no reply text)'}"
    what = "error" if run.status == Run.Status.FAILED else "reason"
    body = f"{head}\n{what}: {run.error or run.status}"
    return f"{body}\npartial reply: {text}" if text else body


def subagent_announce(*, run_id) -> bool:
    """Announce a finished child run to its parent session, at most once. True when this call did it;
    False when there was nothing to do (not a child's run, not finished, already announced, or dropped)."""
    with transaction.atomic():
        run = (
            Run.objects.select_for_update(of=("self",), no_key=True).select_related("session__parent")
            .filter(pk=run_id).first()
        )
        if run is None or run.announced_at is not None or not run.is_terminal or run.trigger != Run.Trigger.SUBAGENT:
            return False
        child = run.session
        parent = child.parent
        if parent is None:
            return False
        if run.params.get("merged_into") or (run.status == Run.Status.ABORTED and run.error == PARENT_ABORTED):
            # A message that joined a run already under way is answered by that run; a child stopped with
            # its parent's run must not restart the parent the user just stopped.
            _stamp(run)
            logger.info("sub-agent run %s of %s not announced (%s)", run.pk, child.key, run.error or "merged")
            return False
        try:
            announced = run_submit(
                session=parent,
                content=[{"type": "text", "text": _announcement(child, run)}],
                trigger=Run.Trigger.SUBAGENT,
                params={"subagent_run": str(run.pk)},
                mode=AgentSession.QueueMode.STEER,
            )
        except SessionClosed:
            _stamp(run)
            logger.warning("sub-agent run %s of %s: parent session %s is closed; result dropped",
                           run.pk, child.key, parent.key)
            return False
        except LimitExceeded as exc:
            # Nothing was written and nothing is stamped: the sweep tries again once the budget allows.
            logger.warning("sub-agent run %s of %s not announced yet: %s", run.pk, child.key, exc.message)
            return False
        # In the announcement's transaction: the stamp and the parent's new run commit together or not at all.
        _stamp(run)
    logger.info("sub-agent run %s (%s) announced to %s as run %s", run.pk, run.status, parent.key, announced.pk)
    return True


def _stamp(run: Run) -> None:
    run.announced_at = timezone.now()
    run.save(update_fields=["announced_at"])


def subagents_sweep(*, batch: int = 200) -> int:
    """Housekeeping: announce finished child runs whose announcement was lost (a worker killed after the
    run's commit, before its run_finished signal). Safe on every worker at once."""
    pending = (
        Run.objects.filter(
            trigger=Run.Trigger.SUBAGENT, announced_at__isnull=True, status__in=Run.TERMINAL_STATUSES,
            session__parent__isnull=False,
        )
        .order_by("finished_at")
        .values_list("pk", flat=True)[:batch]
    )
    done = 0
    for run_id in list(pending):
        if subagent_announce(run_id=run_id):
            logger.warning("sub-agent run %s announced by the sweep (its signal was lost)", run_id)
            done += 1
    return done


def subagents_abort_spawned(*, run_id) -> int:
    """Abort the queued and active runs of the sessions that run `run_id` spawned."""
    children = Run.objects.filter(session__spawned_by_id=run_id, status__in=PENDING_STATUSES)
    aborted = 0
    for child_run in list(children):
        run_abort(run=child_run, reason=PARENT_ABORTED)
        aborted += 1
    if aborted:
        logger.info("run %s ended aborted: aborted %s run(s) of its sub-agents", run_id, aborted)
    return aborted


def subagents_on_run_finished(sender, run_id, status, trigger=None, **kwargs):
    """run_finished receiver (connected in sessions/apps.py): announce a child's run, and take the
    children of an aborted run down with it. Errors are logged by the sender; the sweep catches up."""
    if status == Run.Status.ABORTED:
        subagents_abort_spawned(run_id=run_id)
    if trigger == Run.Trigger.SUBAGENT:
        subagent_announce(run_id=run_id)
