"""What the model sees of a session: its transcript as Messages API turns (compaction.py may replace the
older part with a summary)."""

from sessions.models import Message


def model_context(session_id) -> list[dict]:
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
