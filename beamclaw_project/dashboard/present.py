"""How the dashboard shows stored data: content blocks, approvals, schedules and run events.

Pure functions of what they are given (no queries), so templates and the socket render the same thing.
Model and tool output is untrusted: everything here returns plain text that the templates escape.
"""

import json

from cron.models import CronJob
from cron.schedule import duration_format
from sessions import events
from tools.approvals import always_pattern, covered_input
from tools.models import Approval
from tools.registry import registered_tools

PREVIEW_CHARS = 4000


def pretty(value) -> str:
    """JSON for people: indented, non-ASCII kept, cut at PREVIEW_CHARS with a note saying so."""
    text = value if isinstance(value, str) else json.dumps(value, indent=2, ensure_ascii=False, default=str)
    if len(text) > PREVIEW_CHARS:
        return f"{text[:PREVIEW_CHARS]}\n… ({len(text) - PREVIEW_CHARS} more characters)"
    return text


def _result_text(content) -> str:
    """A tool_result's content (a string, or a list of blocks) as text."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, dict) and block.get("type") == "text":
                parts.append(str(block.get("text", "")))
            elif isinstance(block, dict) and block.get("type") == "image":
                parts.append("[image]")
            else:
                parts.append(pretty(block))
        return "\n".join(parts)
    return pretty(content)


def blocks_display(content) -> list[dict]:
    """Anthropic content blocks as {kind, label, body, is_error}; a block of an unknown type is shown as
    its JSON rather than dropped, so no turn of a transcript looks empty."""
    if isinstance(content, str):
        return [{"kind": "text", "label": "", "body": content, "is_error": False}]
    shown = []
    for block in content if isinstance(content, list) else [content]:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            shown.append({"kind": "text", "label": "", "body": str(block.get("text", "")), "is_error": False})
        elif kind == "tool_use":
            label = f"tool call: {block.get('name', '?')} ({block.get('id', '')})"
            shown.append({"kind": "tool_use", "label": label, "body": pretty(block.get("input", {})), "is_error": False})
        elif kind == "tool_result":
            error = bool(block.get("is_error"))
            label = f"tool result{' (error)' if error else ''} for {block.get('tool_use_id', '?')}"
            shown.append({"kind": "tool_result", "label": label, "body": _result_text(block.get("content", "")),
                          "is_error": error})
        elif kind == "image":
            source = block.get("source") or {}
            shown.append({"kind": "other", "label": "image", "body": source.get("media_type") or source.get("url") or "",
                          "is_error": False})
        elif kind in ("thinking", "redacted_thinking"):
            shown.append({"kind": "other", "label": kind, "body": str(block.get("thinking", "")), "is_error": False})
        else:
            shown.append({"kind": "other", "label": str(kind or "block"), "body": pretty(block), "is_error": False})
    return shown


def approval_display(approval: Approval) -> dict:
    """What an approver is asked to allow: the input the decision covers (a tool's harmless inputs, which
    may vary, listed apart) and the allowlist pattern "allow always" would add."""
    spec = registered_tools().get(approval.tool)
    if spec is None:
        return {"covered": pretty(approval.input), "varies": [], "always_pattern": ""}
    covered = covered_input(spec, approval.input)
    return {
        "covered": pretty(covered),
        "varies": sorted(set(approval.input) - set(covered)),
        "always_pattern": always_pattern(spec, approval.input),
    }


def schedule_display(job: CronJob) -> str:
    if job.schedule_unreadable:
        return f"unreadable {job.kind} schedule"
    if job.kind == CronJob.Kind.AT:
        return f"once at {job.at:%Y-%m-%d %H:%M:%S %Z}"
    if job.kind == CronJob.Kind.EVERY:
        return f"every {duration_format(job.every_seconds)}"
    return f"cron “{job.expr}” ({job.tz})"


def event_display(event: events.RunEvent) -> dict:
    """One run event as {seq, name, summary, detail}: the line the run page lists for it."""
    payload = event.payload
    summary, detail = "", ""
    if event.event in (events.TOOL_CALL, events.TOOL_RESULT):
        summary = f"{payload.get('name', '?')} · {payload.get('status', '')}"
        detail = pretty(payload.get("input") if event.event == events.TOOL_CALL else payload.get("output"))
    elif event.event.startswith("approval."):
        summary = f"{payload.get('tool', '?')} · {payload.get('status', '')}"
        detail = payload.get("subject", "")
        if payload.get("decided_by"):
            summary += f" by {payload['decided_by']}"
    elif event.event == events.RUN_COMPLETED:
        usage = payload.get("usage") or {}
        summary = f"{usage.get('input_tokens', 0)} tokens in, {usage.get('output_tokens', 0)} out"
    elif event.event in (events.RUN_FAILED, events.RUN_ABORTED, events.STREAM_INTERRUPTED):
        summary = payload.get("error", "")
    elif event.event == events.COMPACTION:
        summary = "older turns were summarized"
    elif event.event == events.TEXT_DELTA:
        summary = f"step {payload.get('step', 0)}"
    return {"seq": event.seq, "name": event.event, "summary": summary, "detail": detail}


def reply_text(run_events: list[events.RunEvent]) -> str:
    """The text a run streamed, in order, a blank line between steps (the page's script does the same)."""
    parts, step = [], None
    for event in run_events:
        if event.event != events.TEXT_DELTA:
            continue
        if step is not None and event.payload.get("step") != step:
            parts.append("\n\n")
        step = event.payload.get("step")
        parts.append(event.payload.get("text", ""))
    return "".join(parts)
