"""What the admin tests share: a session with a transcript, runs driven by the fake model, page text."""

import html
import json
import re
import uuid

from django.test import Client

from sessions.models import AgentSession, Run
from sessions.runs import run_submit
from tests.conftest import wait_until


def page(client: Client, url: str, **params) -> str:
    """The page's HTML with entities decoded, as the operator reads it; fails on anything but a 200."""
    response = client.get(url, params)
    assert response.status_code == 200, (url, response.status_code)
    return html.unescape(response.content.decode())


def visible(markup: str) -> str:
    """The text of some HTML without its tags."""
    return re.sub(r"<[^>]+>", "", markup)


def list_row(markup: str, link_text: str) -> str:
    """The text of the changelist row whose link reads `link_text`."""
    rows = [row for row in markup.split("<tr")[1:] if f">{link_text}</a>" in row]
    assert len(rows) == 1, f"{len(rows)} rows link {link_text!r}"
    return visible(rows[0].split("</tr>")[0])


def session_for(bundle, **fields) -> AgentSession:
    return AgentSession.objects.create(
        tenant=bundle.tenant, agent=bundle.agent, key=f"agent:assistant:{uuid.uuid4().hex[:8]}", **fields
    )


def ask(session: AgentSession, text: str) -> Run:
    return run_submit(session=session, content=[{"type": "text", "text": text}], trigger="api")


def tool(name: str, tool_input: dict) -> str:
    """The fake model's directive to call a tool."""
    return f"[[tool={name}:{json.dumps(tool_input)}]]"


def wait_for_status(run: Run, *statuses: str, timeout: float = 30) -> Run:
    def reached():
        current = Run.objects.get(pk=run.pk)
        return current if current.status in statuses else None

    return wait_until(reached, timeout=timeout, message=f"run {run.pk} to be {' or '.join(statuses)}")
