"""`make run`'s process manager: honcho, with two changes.

- When whatever reads honcho's output goes away first (`make run | tee run.log`, stopped by the same Ctrl-C
  that stops honcho), honcho's next line raises BrokenPipeError inside its own SIGINT handler, before it
  has told any process to stop. It then waits forever for processes it never stopped, and the next
  `make run` finds the fake model's port taken. Here a line that cannot be written is dropped, so the
  Ctrl-C goes on to stop every process.
- Honcho relays a process's output a line at a time: each line is pickled through a multiprocessing queue
  and printed with a flush of its own, ~0.3 ms of CPU a line across honcho's processes, most of it
  waking up: with the three INFO lines of a request (the access line, the run's start and end) that was a
  tenth of the two cores under load. Here a relay reads what its process wrote at most every 50 ms (a line
  shows at most that late) and sends every complete line it found as one message, written with one flush.

Usage: python scripts/procs.py <honcho arguments>, e.g. `-f Procfile -d . start`.
"""

import fcntl
import os
import signal
import sys
import time

from honcho import command, manager, printer, process

READ_EVERY_SECONDS = 0.05
# What a process may write between two reads before its writes wait: 1 MiB, the most an unprivileged
# process may ask for (Linux's default pipe holds 64 KiB, ~200 JSON lines).
PIPE_BYTES = 1 << 20


class LinesTogetherProcess(process.Process):
    def run(self, events=None, ignore_signals=False):
        self._events = events
        self._child = self._child_ctor(self.cmd, env=self.env, cwd=self.cwd)
        self._send_message({"pid": self._child.pid}, type="start")
        if ignore_signals:  # as honcho's: the relay ends when the process's output does
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stdout = self._child.stdout.fileno()  # read past the buffered reader, which stays unused
        try:
            fcntl.fcntl(stdout, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        except OSError:
            pass  # a smaller pipe only makes a chatty process wait for the next read sooner
        partial = b""
        while chunk := os.read(stdout, PIPE_BYTES):
            complete, newline, partial = (partial + chunk).rpartition(b"\n")
            if newline and not self.quiet:
                self._send_message(complete + newline)
            time.sleep(READ_EVERY_SECONDS)
        if partial and not self.quiet:
            self._send_message(partial)
        self._child.stdout.close()
        self._child.wait()
        self._send_message({"returncode": self._child.returncode}, type="stop")


class OutputSafePrinter(printer.Printer):
    def write(self, message):
        try:
            self._write_together(message)
        except (BrokenPipeError, ValueError):  # ValueError: writing to the stream once it is closed
            pass

    def _write_together(self, message):
        """Honcho's format (`HH:MM:SS name | line`), all of a message's lines in one write."""
        if message.type != "line":
            raise RuntimeError('Printer can only process messages of type "line"')
        data = message.data.decode("utf-8", "replace") if isinstance(message.data, bytes) else message.data
        prefix = ""
        if self.prefix:
            name = (message.name or "").ljust(self.width)
            prefix = f"{message.time.strftime(self.time_format)} {name + ' ' if name else ''}| "
            if self.colour and self._colours_supported and message.colour:
                prefix = printer._colour_string(message.colour, prefix)
        self.output.write("".join(f"{prefix}{line}\n" for line in data.splitlines()))
        self.output.flush()


if __name__ == "__main__":
    command.Printer = OutputSafePrinter  # the name honcho's `start` builds its printer from
    manager.Process = LinesTogetherProcess  # the name honcho's Manager builds each process's relay from
    sys.exit(command.main())
