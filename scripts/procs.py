"""`make run`'s process manager: honcho, with one fix.

When whatever reads honcho's output goes away first (`make run | tee run.log`, stopped by the same Ctrl-C
that stops honcho), honcho's next line raises BrokenPipeError inside its own SIGINT handler, before it
has told any process to stop. It then waits forever for processes it never stopped, and the next
`make run` finds the fake model's port taken. Here a line that cannot be written is dropped, so the
Ctrl-C goes on to stop every process.

Usage: python scripts/procs.py <honcho arguments>, e.g. `-f Procfile -d . start`.
"""

import sys

from honcho import command, printer


class OutputSafePrinter(printer.Printer):
    def write(self, message):
        try:
            super().write(message)
        except (BrokenPipeError, ValueError):  # ValueError: writing to the stream once it is closed
            pass


if __name__ == "__main__":
    command.Printer = OutputSafePrinter  # the name honcho's `start` builds its printer from
    sys.exit(command.main())
