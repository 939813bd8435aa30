"""The terminal chat of `manage.py chat`: one person at a terminal talking to one agent session.

Invariants, and why:
- It is one more edge of the services every other edge uses, never a client of the gateway over HTTP: a
  line typed is a `run_submit` (as the WebSocket's `chat.send`), the reply is read with `follow_run` (so a
  lost Redis stream still ends with the stored reply), an approval is decided by `approval_resolve` (the one
  approvals service, `decided_by` = `terminal:<user>`) and Ctrl-C is `run_abort`. What an operator sees here
  is what a WebSocket client of the same session sees.
- Every ORM call happens on the main thread, outside any event loop (Django refuses the ORM inside one).
  The run's event stream is read by one background thread that runs one event loop for the whole chat
  (the async Redis pool binds its connections to the loop that opened them) and hands events over through a
  queue. So the main thread, which reads the terminal and writes to it, is always where Ctrl-C lands, and a
  prompt never interleaves with the stream: events wait in the queue while an approval is asked.
- Ctrl-C during a run aborts the run, then the chat waits for the run's end (a second Ctrl-C stops waiting),
  so the next prompt starts after the reply it cut off. At the prompt, Ctrl-C or end of input ends the chat.
- Lines are read with `input()`, so the chat works on a pipe as on a terminal (where readline edits them).
- The session is created with the first message, so starting the chat and leaving leaves no empty session.
"""

import asyncio
import getpass
import json
import os
import queue
import sys
import threading
from dataclasses import dataclass

from django.db import connection

from beamclaw_project.errors import DomainError, InvalidInput, NotFound
from sessions import events
from sessions.content import content_parse
from sessions.models import AgentSession, Message, Run
from sessions.run_stream import follow_run
from sessions.runs import run_abort, run_submit
from sessions.services import session_get_or_create, session_key_normalize
from tenants.models import Agent, Tenant
from tenants.selectors import agent_by_slug, agents_of
from tools.models import Approval
from tools.services import ApprovalNotPending, approval_resolve

CHOICES_SHOWN = 20
HISTORY_SHOWN = 6
# A tool's result is summed up on one line of at most this many characters.
RESULT_SUMMARY_CHARS = 200
APPROVAL_PROMPT_CHOICES = "[y]es once / [a]lways / [N]o: "
_ENDED = object()


@dataclass(frozen=True)
class ChatTarget:
    tenant: Tenant
    agent: Agent
    key: str
    session: AgentSession | None  # None until the first message creates it


def _choices(slugs) -> str:
    """The first CHOICES_SHOWN slugs of a queryset, and how many more there are."""
    shown = list(slugs.values_list("slug", flat=True)[:CHOICES_SHOWN])
    if not shown:
        return "none exist yet"
    more = slugs.count() - len(shown) if len(shown) == CHOICES_SHOWN else 0
    return ", ".join(shown) + (f" and {more} more" if more else "")


def chat_target_resolve(*, tenant_slug: str | None, agent_slug: str | None, session_key: str | None) -> ChatTarget:
    """The tenant, agent and session a chat talks to. Raises NotFound naming the choices when the tenant or
    agent is missing or unknown, InvalidInput for a session key of another agent, a closed (archived) session
    or a suspended tenant."""
    tenant = Tenant.objects.filter(slug=tenant_slug).first() if tenant_slug else None
    if tenant is None:
        said = f"No tenant '{tenant_slug}'" if tenant_slug else "Name the tenant with --tenant"
        raise NotFound(
            f"{said}. Tenants: {_choices(Tenant.objects.order_by('slug'))} "
            "(create one with `python manage.py create_tenant SLUG`)."
        )
    if tenant.status != Tenant.Status.ACTIVE:
        raise InvalidInput(f"Tenant '{tenant.slug}' is {tenant.status}; its agents take no messages.")
    agent = agent_by_slug(tenant=tenant, slug=agent_slug) if agent_slug else None
    if agent is None:
        said = f"No agent '{agent_slug}' in tenant '{tenant.slug}'" if agent_slug else "Name the agent with --agent"
        raise NotFound(f"{said}. Agents of '{tenant.slug}': {_choices(agents_of(tenant=tenant))}.")
    key = session_key_normalize(agent=agent, key=session_key)
    session = AgentSession.objects.filter(tenant=tenant, key=key).first()
    if session is not None and session.agent_id != agent.pk:
        raise InvalidInput(f"Session '{key}' belongs to another agent.")
    if session is not None and session.status == AgentSession.Status.CLOSED:
        raise InvalidInput(f"Session '{key}' is closed (an archive); name another with --session, or none for a new one.")
    return ChatTarget(tenant=tenant, agent=agent, key=key, session=session)


def _one_line(text: str, limit: int = RESULT_SUMMARY_CHARS) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def result_summary(output) -> str:
    """A tool's result on one line: its error, else its output text (exec's with the exit code), else its JSON."""
    if isinstance(output, dict):
        if output.get("error"):
            return _one_line(f"error: {output['error']}")
        if isinstance(output.get("output"), str):
            exit_code = f" [exit code {output['exit_code']}]" if output.get("exit_code") is not None else ""
            return _one_line(output["output"]) + exit_code
    return _one_line(json.dumps(output, ensure_ascii=False))


def _block_summary(block: dict) -> str:
    kind = block.get("type")
    if kind == "text":
        return block.get("text", "")
    if kind == "tool_use":
        return f"[tool {block.get('name')} {json.dumps(block.get('input'), ensure_ascii=False)}]"
    if kind == "tool_result":
        content = block.get("content")
        if isinstance(content, list):
            content = " ".join(part.get("text", "") for part in content if part.get("type") == "text")
        return f"[result] {content or ''}"
    return f"[{kind}]"


def terminal_user() -> str:
    """Who decided an approval at this terminal, for the approval's `decided_by`."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a uid without a passwd entry (containers) and no USER in the environment
        return f"uid {os.getuid()}"


class _EventPump:
    """One thread, one event loop, for the life of the chat: follows a run and queues its events."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="chat-events", daemon=True)
        self.thread.start()

    def follow(self, run_id) -> queue.Queue:
        """Events of the run, then _ENDED; an exception (TimeoutError: the run went quiet) in their place."""
        events_queue: queue.Queue = queue.Queue()

        async def pump():
            try:
                async for event in follow_run(run_id):
                    if event is not None:
                        events_queue.put(event)
            except Exception as exc:  # noqa: BLE001 - handed to the main thread, which reports it
                events_queue.put(exc)
            events_queue.put(_ENDED)

        asyncio.run_coroutine_threadsafe(pump(), self.loop)
        return events_queue

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)


class TerminalChat:
    """Talks on sys.stdin and sys.stdout, where input() reads and writes its prompt."""

    def __init__(self, target: ChatTarget):
        self.target = target
        self.session = target.session
        self.decided_by = f"terminal:{terminal_user()}"
        self.tty = os.isatty(sys.stdin.fileno())
        self.at_line_start = True
        # Whether the reply's text is being written on the current line (after the agent's name).
        self.replying = False
        # The live stream was lost and the stored reply differs from what was shown: show it whole at the end.
        self.reply_rewritten = False
        # The run being shown has ended: a Ctrl-C arriving just after must not wait for its end again.
        self.run_ended = False

    # --- output --------------------------------------------------------------------------------------

    def write(self, text: str) -> None:
        if text:
            sys.stdout.write(text)
            sys.stdout.flush()
            self.at_line_start = text.endswith("\n")

    def end_line(self) -> None:
        self.write("" if self.at_line_start else "\n")
        self.replying = False

    def line(self, text: str) -> None:
        """`text` on a line of its own."""
        self.end_line()
        self.write(text + "\n")

    def reply_text(self, text: str) -> None:
        if not self.replying:
            self.end_line()
            self.write(f"{self.target.agent.slug}> ")
            self.replying = True
        self.write(text)

    def ask(self, question: str) -> str:
        """A line from the person; EOFError at end of input, KeyboardInterrupt on Ctrl-C. Read from a pipe, the
        line is echoed, so the output reads like the terminal's (where the terminal echoes it)."""
        self.end_line()
        try:
            answer = input(question)
        except (EOFError, KeyboardInterrupt):
            self.at_line_start = False  # the question is on the line, nothing after it
            raise
        self.write(answer + "\n" if not self.tty else "")
        self.at_line_start = True
        return answer

    # --- the conversation ----------------------------------------------------------------------------

    def run(self) -> None:
        self._greet()
        if self.tty:
            import readline  # noqa: F401 - line editing and history for input() at a terminal

        pump = _EventPump()
        try:
            while True:
                try:
                    text = self.ask("you> ")
                except (EOFError, KeyboardInterrupt):
                    self.end_line()
                    return
                if text.strip():
                    self._turn(pump, text)
                    # An idle chat holds no database connection (it goes back to the pool).
                    connection.close()
        finally:
            pump.close()

    def _greet(self) -> None:
        tenant, agent, key = self.target.tenant, self.target.agent, self.target.key
        state = "resumed" if self.session is not None else "new"
        self.line(f"Chatting with agent '{agent.slug}' of tenant '{tenant.slug}' in session {key} ({state}).")
        self.line(f"Resume it later with: python manage.py chat --tenant {tenant.slug} --agent {agent.slug} --session {key}")
        self.line("Ctrl-C stops a reply; Ctrl-D (or Ctrl-C) at the prompt quits.")
        if self.session is None:
            return
        earlier = list(Message.objects.filter(session=self.session).order_by("-seq")[:HISTORY_SHOWN])[::-1]
        if earlier:
            self.line(f"--- the last {len(earlier)} messages ---")
            for message in earlier:
                results_only = all(block.get("type") == "tool_result" for block in message.content)
                speaker = agent.slug if message.role != Message.Role.USER else "tool" if results_only else "you"
                self.line(f"{speaker}> {_one_line(' '.join(_block_summary(b) for b in message.content), 500)}")
            self.line("---")

    def _turn(self, pump: _EventPump, text: str) -> None:
        try:
            if self.session is None:
                self.session = session_get_or_create(tenant=self.target.tenant, agent=self.target.agent, key=self.target.key)
            run = run_submit(
                session=self.session, content=content_parse(text, where="the message"), trigger=Run.Trigger.API
            )
        except DomainError as exc:
            self.line(f"[not sent: {exc.message}]")
            return
        if run.status == Run.Status.QUEUED:
            self.line("[queued behind the session's current run]")
        events_queue = pump.follow(run.pk)
        self.run_ended = False
        try:
            self._show(events_queue)
        except KeyboardInterrupt:
            self._abort(run, events_queue)

    def _abort(self, run: Run, events_queue: queue.Queue) -> None:
        if self.run_ended:
            return
        run_abort(run=run, reason="aborted at the terminal (Ctrl-C)")
        self.line("[aborting the run…]")
        try:
            self._show(events_queue)
        except KeyboardInterrupt:
            self.line("[stopped waiting; the run ends on its own]")

    def _show(self, events_queue: queue.Queue) -> None:
        """Print the run's events until it ends."""
        while (item := events_queue.get()) is not _ENDED:
            if isinstance(item, Exception):
                self.line(f"[stopped following the run: {item}]")
            else:
                self._event(item)
        self.run_ended = True
        self.end_line()

    def _event(self, event: events.RunEvent) -> None:
        payload = event.payload
        match event.event:
            case events.TEXT_DELTA:
                self.reply_text(payload.get("text", ""))
            case events.TOOL_CALL:
                self.line(f"[tool] {payload['name']} {json.dumps(payload.get('input'), ensure_ascii=False)}")
            case events.TOOL_RESULT:
                self.line(f"[tool] {payload['name']} {payload['status']}: {result_summary(payload.get('output'))}")
            case "approval.requested":
                self._ask_approval(payload)
            case "approval.resolved":
                self.line(f"[approval {payload['status']} by {payload['decided_by']}]")
            case events.COMPACTION:
                self.line("[older turns of the session were summarized]")
            case events.STREAM_INTERRUPTED:
                self.line(f"[{payload.get('error')}]")
                self.reply_rewritten = True
            case events.RUN_COMPLETED:
                if self.reply_rewritten and payload.get("text"):
                    self.reply_text(payload["text"])
                self.reply_rewritten = False
            case events.RUN_FAILED:
                self.line(f"[the run failed: {payload.get('error')}]")
            case events.RUN_ABORTED:
                self.line(f"[the run was aborted: {payload.get('error')}]")

    def _ask_approval(self, payload: dict) -> None:
        """Ask at the prompt; anything but yes or always (end of input included) denies, as the prompt's
        capital N says."""
        tool_input = json.dumps(payload.get("input"), ensure_ascii=False)
        try:
            answer = self.ask(f"Allow {payload['tool']} {tool_input}? {APPROVAL_PROMPT_CHOICES}").strip().lower()
        except EOFError:
            answer = ""
        allow = answer in ("y", "yes", "a", "always")
        try:
            approval_resolve(
                approval_id=payload["approval_id"], tenant=self.target.tenant, decision="allow" if allow else "deny",
                always=answer in ("a", "always"), decided_by=self.decided_by,
            )
        except ApprovalNotPending as exc:
            self.line(f"[too late: {exc.message}]")
        except Approval.DoesNotExist:
            self.line("[the approval no longer exists]")
