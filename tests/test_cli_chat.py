"""`manage.py chat`, driven as an operator would drive it: a real process, lines on its stdin, its stdout
read as it is written, SIGINT for Ctrl-C; behind it the real worker and the fake model."""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading

import pytest

from sessions.models import AgentSession, Message, Run
from tests.conftest import ROOT, wait_until
from tools.models import Approval

requires_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed (exec refuses to run)")
PROMPT = "you> "


class Chat:
    """`manage.py chat` in a subprocess; `output` is everything it printed so far."""

    def __init__(self, *args: str):
        self.proc = subprocess.Popen(
            [sys.executable, "manage.py", "chat", *args], cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        self.output = ""
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while chunk := os.read(self.proc.stdout.fileno(), 65536):
            self.output += chunk.decode(errors="replace")

    def wait_for(self, text: str, *, after: int = 0, timeout: float = 30) -> int:
        """Wait until `text` is printed after position `after`; the position just past it."""
        found = wait_until(
            lambda: (self.output.find(text, after) + 1) or self.proc.poll() is not None, timeout=timeout,
            message=f"{text!r} in the chat's output:\n{self.output}",
        )
        assert found is not True, f"the chat exited ({self.proc.returncode}) before printing {text!r}:\n{self.output}"
        return found - 1 + len(text)

    def say(self, line: str) -> None:
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def quit(self) -> int:
        self.proc.stdin.close()
        code = self.proc.wait(30)
        self.reader.join(5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def chat():
    started: list[Chat] = []

    def start(*args: str) -> Chat:
        started.append(Chat(*args))
        return started[-1]

    yield start
    for running in started:
        running.kill()


def session_key(output: str) -> str:
    return output.split("in session ", 1)[1].split(" ", 1)[0]


def test_a_reply_streams_while_the_run_is_still_going(worker, tenant, chat):
    term = chat("--tenant", tenant.tenant.slug, "--agent", "assistant")
    start = term.wait_for(PROMPT)
    assert "Resume it later with: python manage.py chat --tenant" in term.output
    term.say("streaming words one by one [[deltas=12]][[delay_ms=250]]")
    term.wait_for("assistant> Echo: stre", after=start)
    run = Run.objects.get(session__key=session_key(term.output))
    assert run.status == "running", "the first words are on screen before the reply is finished"
    end = term.wait_for("Echo: streaming words one by one\n", after=start)
    term.wait_for(PROMPT, after=end)
    assert Run.objects.get(pk=run.pk).status == "succeeded"
    assert term.quit() == 0


@requires_bwrap
def test_a_tool_call_asks_for_approval_inline(worker, make_tenant, chat):
    bundle = make_tenant(approval={"mode": "always", "allowlist": []})
    term = chat("--tenant", bundle.tenant.slug, "--agent", "assistant")
    term.wait_for(PROMPT)
    command = '[[tool=exec:{"command": "echo approved-and-ran"}]]'

    term.say(command)
    question = 'Allow exec {"command": "echo approved-and-ran"}? [y]es once / [a]lways / [N]o: '
    asked = term.wait_for(question)
    term.say("y")
    done = term.wait_for("Tool results: approved-and-ran", after=asked)
    assert '[tool] exec {"command": "echo approved-and-ran"}' in term.output
    assert "[tool] exec succeeded: approved-and-ran [exit code 0]" in term.output[asked:done]
    approval = Approval.objects.get(tenant=bundle.tenant)
    assert approval.status == "allowed" and approval.decided_by.startswith("terminal:")

    # "y" was for that call only: the same command asks again, and Enter (the default, No) denies it.
    prompt = term.wait_for(PROMPT, after=done)
    term.say(command)
    asked = term.wait_for(question, after=prompt)
    term.say("")
    term.wait_for("[tool] exec denied", after=asked)
    term.wait_for(PROMPT, after=asked)
    assert sorted(Approval.objects.filter(tenant=bundle.tenant).values_list("status", flat=True)) == ["allowed", "denied"]
    assert term.quit() == 0


def test_ctrl_c_aborts_the_run_and_the_chat_goes_on(worker, tenant, chat):
    term = chat("--tenant", tenant.tenant.slug, "--agent", "assistant")
    term.wait_for(PROMPT)
    term.say("a long answer please [[deltas=40]][[delay_ms=250]]")
    started = term.wait_for("assistant> Echo:")
    run = Run.objects.get(session__key=session_key(term.output))

    term.proc.send_signal(signal.SIGINT)
    wait_until(lambda: Run.objects.get(pk=run.pk).status == "aborted", timeout=15, message="the run to be aborted")
    after_abort = term.wait_for("[the run was aborted: aborted at the terminal (Ctrl-C)]", after=started)
    prompt = term.wait_for(PROMPT, after=after_abort)

    term.say("still there?")
    term.wait_for("assistant> Echo: still there?\n", after=prompt)
    assert term.quit() == 0
    assert Run.objects.filter(session=run.session, status="succeeded").count() == 1


def test_session_resumes_the_same_transcript(worker, tenant, chat, fake_requests):
    first = chat("--tenant", tenant.tenant.slug, "--agent", "assistant", "--session", "notes")
    first.wait_for(PROMPT)
    assert "in session agent:assistant:notes (new)" in first.output
    first.say("remember the word ocelot")
    first.wait_for("Echo: remember the word ocelot\n")
    assert first.quit() == 0

    again = chat("--tenant", tenant.tenant.slug, "--agent", "assistant", "--session", "agent:assistant:notes")
    shown = again.wait_for(PROMPT, after=again.wait_for("\n---\n"))
    assert "in session agent:assistant:notes (resumed)" in again.output
    assert "you> remember the word ocelot" in again.output[:shown], "the transcript so far is shown"
    again.say("which word was it?")
    again.wait_for("Echo: which word was it?\n", after=shown)
    assert again.quit() == 0

    session = AgentSession.objects.get(tenant=tenant.tenant, key="agent:assistant:notes")
    assert Message.objects.filter(session=session).count() == 4
    last = next(r["body"] for r in reversed(fake_requests()) if "which word was it?" in json.dumps(r["body"]))
    assert "ocelot" in json.dumps(last["messages"]), "the model saw the earlier turn"


def test_unknown_tenant_or_agent_names_the_choices(tenant):
    env = {**os.environ}
    missing_tenant = subprocess.run(
        [sys.executable, "manage.py", "chat", "--tenant", "no-such-tenant", "--agent", "assistant"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )
    assert missing_tenant.returncode == 1
    assert "No tenant 'no-such-tenant'. Tenants: " in missing_tenant.stderr
    assert "python manage.py create_tenant SLUG" in missing_tenant.stderr

    missing_agent = subprocess.run(
        [sys.executable, "manage.py", "chat", "--tenant", tenant.tenant.slug, "--agent", "nobody"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )
    assert missing_agent.returncode == 1
    assert f"No agent 'nobody' in tenant '{tenant.tenant.slug}'. Agents of '{tenant.tenant.slug}': assistant." in missing_agent.stderr
