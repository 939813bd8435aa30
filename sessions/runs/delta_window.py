"""Text deltas that follow each other within a couple of milliseconds travel as one event.

Every `text.delta` costs a Redis append in the worker and, at every client following the run, a read and a
chunk. A model (or a cache) that writes tokens faster than that pays it per token for nothing a person can
see. So a delta goes out at once when the last one went out at least WINDOW_SECONDS ago (the first of a
step always does: time to first token is unchanged); one that comes sooner waits until then, joined with
any that arrive meanwhile. No delta waits longer than the window: a process-wide flusher thread sends what
is due even when the model pauses. Deltas of a model writing slower than the window (a person's reading
pace) all go out as they come.

A run whose submitter waits for the whole reply (a chat completion without `stream`, a cron occurrence, a
sub-agent: UNSTREAMED_PARAM) has nobody reading its deltas as they come, unless someone follows the run
meanwhile (the dashboard, a WebSocket subscribed to its session). Its window is QUIET_WINDOW_SECONDS, and
holds the first delta too, as long as the last append found no reader following the stream; a reader that
arrives gets what waits within that window, and every delta after as it comes. A plain reply shorter than
the window is one append instead of one per delta (docs/performance.md, "Fifteenth step").

`close()` sends what is still waiting; the step calls it before it publishes anything else, so events stay
in order. A failure to send from the flusher thread is raised in the step at its next delta or at
`close()`, as a failure to send from the step itself would be.
"""

import heapq
import itertools
import threading
import time
from typing import Callable

WINDOW_SECONDS = 0.002
QUIET_WINDOW_SECONDS = 0.5
# The run param (true) of a run whose submitter reads only its end, set by the edge that starts it.
UNSTREAMED_PARAM = "unstreamed"


class DeltaWindow:
    """`send(text)` returns whether a reader follows the stream (None: not known); a quiet window goes by
    it."""

    def __init__(self, send: Callable[[str], bool | None], window: float = WINDOW_SECONDS, *,
                 quiet_window: float | None = None):
        self._send = send
        self._short_window = window
        self._quiet_window = quiet_window
        self._window = window if quiet_window is None else quiet_window
        self._lock = threading.Lock()
        self._waiting: list[str] = []
        # When the last delta went out. A quiet window holds the first one too (nobody waits for it): its
        # window starts when it comes.
        self._sent_at: float | None = float("-inf") if quiet_window is None else None
        self._error: Exception | None = None

    def add(self, text: str) -> None:
        self._raise_error()
        with self._lock:
            now = time.monotonic()
            if self._sent_at is None:
                self._sent_at = now
            if self._waiting or now - self._sent_at < self._window:
                if not self._waiting:
                    _flusher.schedule(self._sent_at + self._window, self)
                self._waiting.append(text)
                return
            self._sent_at = now
            self._sent(self._send(text))

    def close(self) -> None:
        """Send what waits now, and raise what a send from the flusher raised."""
        self.flush()
        self._raise_error()

    def take(self) -> str:
        """What waits, taken unsent: the caller publishes it with what it publishes next (and raises what a
        send from the flusher raised)."""
        self._raise_error()
        with self._lock:
            text, self._waiting = "".join(self._waiting), []
        return text

    def flush(self) -> None:
        with self._lock:
            if not self._waiting:
                return
            text = "".join(self._waiting)
            self._waiting = []
            self._sent_at = time.monotonic()
            try:
                self._sent(self._send(text))
            except Exception as exc:  # noqa: BLE001 - kept for the step's thread, which raises it
                self._error = exc

    def _sent(self, followed: bool | None) -> None:
        if self._quiet_window is not None and followed is not None:
            self._window = self._short_window if followed else self._quiet_window

    def _raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error


class _Flusher:
    """One daemon thread per process that flushes windows when they are due."""

    def __init__(self):
        self._due: list[tuple[float, int, DeltaWindow]] = []
        self._order = itertools.count()  # ties never compare windows
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    def schedule(self, at: float, window: DeltaWindow) -> None:
        with self._wake:
            entry = (at, next(self._order), window)
            heapq.heappush(self._due, entry)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="delta-window-flusher", daemon=True)
                self._thread.start()
            # Woken only when this is due first: otherwise the thread already wakes in time for it (a wake-up
            # per run's reply, under load, for every run whose window another's precedes).
            if self._due[0] is entry:
                self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._due or self._due[0][0] > time.monotonic():
                    self._wake.wait(self._due[0][0] - time.monotonic() if self._due else None)
                _, _, window = heapq.heappop(self._due)
            window.flush()


_flusher = _Flusher()
