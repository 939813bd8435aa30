"""Whether this process is shutting down gracefully (SIGTERM: a deploy, `docker compose up`, Kubernetes).

A draining worker hands its running steps back to the queue at their next stream event instead of
finishing them, so that another worker continues them at once (sessions/runs/step.py) and this one exits
within moments rather than after its longest reply. Set by the worker's shutdown signal
(beamclaw_project/worker.py).
"""

import threading

_draining = threading.Event()


def drain_begin() -> None:
    _draining.set()


def draining() -> bool:
    return _draining.is_set()
