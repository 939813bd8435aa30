"""Whether this process is shutting down gracefully (SIGTERM: a deploy, `docker compose up`, Kubernetes).

A draining worker hands its running steps back to the queue at their next stream event instead of
finishing them, so that another worker continues them at once (sessions/runs/step.py) and this one exits
within moments rather than after its longest reply. Set by the worker's shutdown signal
(beamclaw_project/worker.py).

A draining web process lets open responses finish for a while; once that time is up (`drain_expired`),
responses still open end themselves with a "server restarting" message (beamclaw_project/daphne_hardening.py).
While draining, event streams wake up every DRAIN_TICK_SECONDS instead of every 5 s, so they notice.
"""

import threading

DRAIN_TICK_SECONDS = 0.5

_draining = threading.Event()
_expired = threading.Event()


def drain_begin() -> None:
    _draining.set()


def draining() -> bool:
    return _draining.is_set()


def drain_expire() -> None:
    _expired.set()


def drain_expired() -> bool:
    return _expired.is_set()
