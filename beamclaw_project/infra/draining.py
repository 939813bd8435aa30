"""Whether this process is shutting down gracefully (SIGTERM: a deploy, `docker compose up`, Kubernetes).

A draining worker hands its running steps back to the queue at their next stream event instead of
finishing them, so that another worker continues them at once (sessions/runs/step.py) and this one exits
within moments rather than after its longest reply. Set by the worker's shutdown signal
(beamclaw_project/worker.py).

A draining web process lets open responses finish for a while; once that time is up (`drain_expired`),
responses still open end themselves with a "server restarting" message (beamclaw_project/daphne_hardening.py).
While draining, event streams wake up every DRAIN_TICK_SECONDS instead of every 5 s, so they notice.

A step notices the drain between stream events, and a model may say nothing for a long while (it is
thinking, or stuck); the connections a worker is reading a reply from are therefore shut down when the
drain begins (`cut_on_drain`), so the blocked read ends at once and the step goes back to the queue.
"""

import socket
import threading
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Callable

DRAIN_TICK_SECONDS = 0.5

_draining = threading.Event()
_expired = threading.Event()
_cut_on_drain: set[socket.socket] = set()
_cut_on_drain_lock = threading.Lock()
_thread_cuts = threading.local()


def drain_begin() -> None:
    _draining.set()
    with _cut_on_drain_lock:
        reading = list(_cut_on_drain)
    for sock in reading:
        socket_cut(sock)


@contextmanager
def cut_on_drain(sock: socket.socket | None):
    """While inside, a drain shuts `sock` down: a read blocked on it returns (an error for the reader, who
    sees `draining()` and hands its work back). So may what the thread's `cut_also_by` names. None (no socket
    to be had) does nothing."""
    if sock is None:
        yield
        return
    with _cut_on_drain_lock:
        _cut_on_drain.add(sock)
    also = getattr(_thread_cuts, "watch", None)
    try:
        # Added before the check, so a drain that began meanwhile either finds it in the set or is seen here.
        if draining():
            socket_cut(sock)
        with also(sock) if also is not None else nullcontext():
            yield
    finally:
        with _cut_on_drain_lock:
            _cut_on_drain.discard(sock)


@contextmanager
def cut_also_by(watch: Callable[[socket.socket], AbstractContextManager]):
    """While inside, a socket this thread reads under cut_on_drain is also handed to `watch`, which may shut
    it down (socket_cut) for a reason of its own: a run's abort, for a step that waits for a whole reply and
    so has no stream events between which to poll (sessions/runs/kernel.py)."""
    previous = getattr(_thread_cuts, "watch", None)
    _thread_cuts.watch = watch
    try:
        yield
    finally:
        _thread_cuts.watch = previous


def socket_cut(sock: socket.socket) -> None:
    try:
        # The plain socket's shutdown, also for a TLS socket: the reader's thread owns the TLS state, and
        # shutting the descriptor down is enough to wake its read.
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass  # already closed


def draining() -> bool:
    return _draining.is_set()


def drain_expire() -> None:
    _expired.set()


def drain_expired() -> bool:
    return _expired.is_set()
