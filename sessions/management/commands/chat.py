"""`manage.py chat --tenant T --agent A [--session KEY]`: chat with an agent in the terminal.

The chat itself (streaming, tool calls, approvals, Ctrl-C) is sessions/terminal_chat.py; docs/cli.md.
"""

import logging
import signal

from django.core.management.base import BaseCommand, CommandError

from beamclaw_project.errors import DomainError
from sessions.terminal_chat import TerminalChat, chat_target_resolve


class Command(BaseCommand):
    help = (
        "Chat with an agent in the terminal: replies stream, tool calls show, approvals are asked inline, "
        "Ctrl-C aborts a reply. Reads lines from stdin, so it also works on a pipe."
    )

    def add_arguments(self, parser):
        parser.add_argument("--tenant", help="The tenant's slug.")
        parser.add_argument("--agent", help="The agent's slug.")
        parser.add_argument(
            "--session", help="A session key (agent:<agent>:<name>) or name to resume or start; a new one without it."
        )

    def handle(self, *args, **options):
        try:
            target = chat_target_resolve(
                tenant_slug=options["tenant"], agent_slug=options["agent"], session_key=options["session"]
            )
        except DomainError as exc:
            raise CommandError(exc.message)
        # The terminal belongs to the conversation: the services' INFO log lines (a run started, ...) would land
        # between the prompt and the reply. Warnings and errors still show.
        logging.disable(logging.INFO)
        # Ctrl-C is how a reply is stopped: Python ignores SIGINT when it started ignored (a background job
        # of a non-interactive shell), so it is turned on explicitly.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        TerminalChat(target).run()
