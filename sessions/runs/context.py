"""What the model sees of a session: its transcript as Messages API turns, with everything before the
session's latest compaction replaced by that compaction's summary (compaction.py).

The transcript in Postgres keeps every message (for audit and history); only the model's view is
shortened. The summary goes first, as a user turn marked as a summary, so the rules of the Messages API
still hold: roles alternate (consecutive turns of one role, e.g. after a failed run, or the summary and
the user turn that follows it, are merged) and the first turn is the user's.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import NamedTuple

from beamclaw_project.infra.rows import Columns, select_together
from sessions.models import Compaction, Message, Run

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


class VisibleMessage(NamedTuple):
    seq: int
    role: str
    content: list
    usage: dict
    created_at: datetime


@dataclass(frozen=True)
class TranscriptView:
    """What the model sees of a session, read once per step: the latest compaction and the messages from its
    cut on (all of them when there is none). The context estimate (compaction.py) and the request's turns
    both come from it, so a step reads the transcript once rather than once for each."""

    compaction: Compaction | None
    messages: list[VisibleMessage]

    def turns(self) -> list[dict]:
        """The turns the model gets, in the shape the Messages API accepts: the compaction's summary, then
        the messages."""
        rows = ((m.role, m.content) for m in self.messages)
        if self.compaction is None:
            return turns_merge(rows)
        return turns_merge(rows, first=[summary_turn(self.compaction.summary)])


@cache
def _view_sql(by_run: bool = False) -> tuple[Columns, Columns, str, str]:
    compaction, message = Columns(Compaction, "c"), Columns(Message, "m", fields=VisibleMessage._fields)
    # The session is named by its id, or by one of its runs: a step knows only its run, and reads the run with
    # its transcript in one round trip.
    session = f'(SELECT "session_id" FROM "{Run._meta.db_table}" WHERE "id" = %s)' if by_run else "%s"
    compactions = f'"{Compaction._meta.db_table}" c WHERE c.session_id = {session}'
    # The latest compaction, then the messages from its cut on; the cut is read again in the second
    # statement rather than passed from the first, so the two go to Postgres in one round trip.
    latest = f"SELECT {compaction.sql} FROM {compactions} ORDER BY c.first_kept_seq DESC LIMIT 1"
    visible = (
        f'SELECT {message.sql} FROM "{Message._meta.db_table}" m WHERE m.session_id = {session} AND m.excluded_reason = %s '
        f"AND m.seq >= COALESCE((SELECT max(c.first_kept_seq) FROM {compactions}), 0) ORDER BY m.seq"
    )
    return compaction, message, latest, visible


def transcript_view(session_id) -> TranscriptView:
    """Every step reads this, so its queries are written out (beamclaw_project/infra/rows.py)."""
    return transcript_view_of(*select_together(*transcript_view_statements(session_id=session_id)))


def transcript_view_statements(*, session_id=None, run_id=None) -> list[tuple[str, list]]:
    """transcript_view's two statements, for the session or the session of a run, to send with others."""
    _, _, latest, visible = _view_sql(by_run=session_id is None)
    key = run_id if session_id is None else session_id
    return [(latest, [key]), (visible, [key, "", key])]


def transcript_view_of(compactions: list[tuple], messages: list[tuple]) -> TranscriptView:
    """The view from the rows of transcript_view_statements."""
    compaction_columns, message_columns, _, _ = _view_sql()
    compaction = compaction_columns.instance(compactions[0]) if compactions else None
    return TranscriptView(compaction=compaction, messages=[VisibleMessage(*message_columns.values(r)) for r in messages])

