"""What the model sees of a session: its transcript as Messages API turns, with everything before the
session's latest compaction replaced by that compaction's summary (compaction.py).

The transcript in Postgres keeps every message (for audit and history); only the model's view is
shortened. The summary goes first, as a user turn marked as a summary, so the rules of the Messages API
still hold: roles alternate (consecutive turns of one role, e.g. after a failed run, or the summary and
the user turn that follows it, are merged) and the first turn is the user's.
"""

from collections.abc import Iterable

from sessions.models import Compaction, Message

SUMMARY_HEADER = (
    "[Summary of the earlier conversation. The messages before this point were compacted into this summary "
    "to keep the conversation within the model's context; the full transcript is kept outside it.]"
)


def latest_compaction(session_id) -> Compaction | None:
    # Each compaction cuts after the one before it, so the furthest cut is the latest.
    return Compaction.objects.filter(session_id=session_id).order_by("-first_kept_seq").first()


def summary_turn(summary: str) -> dict:
    return {"role": Message.Role.USER.value, "content": [{"type": "text", "text": f"{SUMMARY_HEADER}\n\n{summary}"}]}


def turns_merge(rows: Iterable[tuple[str, list]], *, first: list[dict] = ()) -> list[dict]:
    """(role, content) rows as alternating turns after `first`; a leading assistant turn gets a user turn
    before it."""
    merged: list[dict] = [dict(turn, content=list(turn["content"])) for turn in first]
    for role, content in rows:
        if not content:
            continue
        if merged and merged[-1]["role"] == role:
            merged[-1]["content"] = merged[-1]["content"] + list(content)
        else:
            merged.append({"role": role, "content": list(content)})
    if merged and merged[0]["role"] != Message.Role.USER:
        merged.insert(0, {"role": "user", "content": [{"type": "text", "text": "(conversation start)"}]})
    return merged


def model_context(session_id) -> list[dict]:
    """The turns the model gets for this session: the latest compaction's summary, then every message
    from its `first_kept_seq` on (all messages when there is none), in the shape the Messages API accepts."""
    compaction = latest_compaction(session_id)
    transcript = Message.objects.filter(session_id=session_id, excluded_reason="").order_by("seq")
    if compaction is None:
        return turns_merge(transcript.values_list("role", "content"))
    transcript = transcript.filter(seq__gte=compaction.first_kept_seq)
    return turns_merge(transcript.values_list("role", "content"), first=[summary_turn(compaction.summary)])
