"""Ids in every log line: the `tenant`, `session` and `run` bound in the current context are added to
each log record (as `ids`, e.g. " [tenant=acme run=3f2c...]", empty outside any context) from a
context variable. The base task (infra/tasks.py) starts every task with a fresh context; code that
learns an id (the engine loading a run) binds it, and everything it logs afterwards carries it.
"""

import contextvars
import logging

FIELDS = ("tenant", "session", "run")
_context: contextvars.ContextVar[dict] = contextvars.ContextVar("beamclaw_log_context", default={})


def log_context_bind(**ids) -> None:
    _context.set({**_context.get(), **{name: str(value) for name, value in ids.items() if value is not None}})


def log_context_reset() -> contextvars.Token:
    return _context.set({})


def log_context_restore(token: contextvars.Token) -> None:
    _context.reset(token)


class LogContextFilter(logging.Filter):
    """Attach the bound ids to every record as `ids`, so the formatter can print them."""

    def filter(self, record: logging.LogRecord) -> bool:
        bound = _context.get()
        named = " ".join(f"{name}={bound[name]}" for name in FIELDS if name in bound)
        record.ids = f" [{named}]" if named else ""
        return True
