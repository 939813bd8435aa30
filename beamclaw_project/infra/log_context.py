"""Ids in every log line: the `tenant`, `session` and `run` bound in the current context are added to
each log record from a context variable, as `ids` for the plain format (e.g. " [tenant=acme run=3f2c...]",
empty outside any context) and as `id_fields` for the JSON one. The base task (infra/tasks.py) starts every
task with a fresh context; code that learns an id (the engine loading a run) binds it, and everything it
logs afterwards carries it.

The JSON format (LOG_FORMAT=json, the default) writes one object per line, whatever the message holds
(newlines and tracebacks are escaped inside it), so a log collector never has to guess where a line ends.
"""

import contextvars
import json
import logging
import sys
from datetime import UTC, datetime

FIELDS = ("tenant", "session", "run")
_context: contextvars.ContextVar[dict] = contextvars.ContextVar("beamclaw_log_context", default={})


def log_context_bind(**ids) -> None:
    _context.set({**_context.get(), **{name: str(value) for name, value in ids.items() if value is not None}})


def log_context_reset() -> contextvars.Token:
    return _context.set({})


def log_context_restore(token: contextvars.Token) -> None:
    _context.reset(token)


class LogContextFilter(logging.Filter):
    """Attach the bound ids to every record, so either formatter can print them."""

    def filter(self, record: logging.LogRecord) -> bool:
        bound = _context.get()
        record.id_fields = {name: bound[name] for name in FIELDS if name in bound}
        named = " ".join(f"{name}={value}" for name, value in record.id_fields.items())
        record.ids = f" [{named}]" if named else ""
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: `time` (UTC, ISO 8601), `level`, `logger`, `message`, the bound `tenant`,
    `session` and `run` (those that are bound), and `exception` (the traceback) when the record has one."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **getattr(record, "id_fields", {}),
        }
        if record.exc_info:
            # Cached on the record like logging.Formatter does, for other handlers of the same record.
            record.exc_text = record.exc_text or self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def daphne_access_log_to_logging() -> None:
    """Daphne writes its access log straight to stdout in NCSA format, past logging. Send each entry through
    the `daphne.access` logger instead, so that in JSON mode the web's output is JSON lines only. Called
    when Daphne loads the application (beamclaw_project/asgi.py), before it builds its access logger."""
    from daphne.access import AccessLogGenerator

    access = logging.getLogger("daphne.access")

    def write_entry(self, host, date, request, status=None, length=None, ident=None, user=None):
        access.info('%s "%s" %s %s', host, request, status or "-", length or "-")

    AccessLogGenerator.write_entry = write_entry


def celery_worker_output_to_json() -> None:
    """A Celery worker writes two things straight to the terminal, past logging: its start-up banner (many
    lines) and, from its signal handlers, a line per shutdown. In JSON mode the banner is logged as one line
    instead, and the shutdown lines are written as JSON lines. They stay out of logging because a signal
    handler that takes logging's locks can deadlock the process it interrupts. Connected by the Celery app
    (beamclaw_project/celery.py); beat has no such hook and runs with `--quiet` (Procfile)."""
    from celery import signals

    def banner_as_log_line(sender, instance, **kwargs):
        from celery.apps import worker
        from django.conf import settings

        if settings.LOG_FORMAT == "json":
            instance.quiet = True
            logging.getLogger("celery.apps.worker").info("%s starting\n%s", sender, instance.startup_info(artlines=False))
            worker.safe_say = _say_as_json

    signals.celeryd_after_setup.connect(banner_as_log_line, weak=False)


def _say_as_json(msg: str, f=sys.__stderr__) -> None:
    record = logging.LogRecord("celery.apps.worker", logging.INFO, __file__, 0, msg.strip(), None, None)
    print(JsonFormatter().format(record), file=f, flush=True)
