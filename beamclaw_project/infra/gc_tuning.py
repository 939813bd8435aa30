"""The cyclic garbage collector in a long-running server process.

CPython frees almost every object by reference counting; its cyclic collector is for the rest, and runs
whenever allocations outnumber deallocations by a threshold (700 container objects). Now and then it also
traverses everything the process holds: Django, Celery, the model SDKs and everything they build at startup,
hundreds of thousands of objects that live as long as the process. Under load that was 4–6% of Daphne's and
a worker's CPU (docs/performance.md, thirteenth step). So once a process has started, what it holds then is
moved out of the collector's sight (`gc.freeze`: it is never freed, as it never would have been), and the
young generation is collected less often: a request's short-lived objects mostly die by reference count
before any collection could look at them.
"""

import gc
import threading

# Net allocations of container objects between two collections of the youngest generation (CPython: 700).
# A request or a step builds and frees thousands of them; the cyclic garbage a collection finds is what
# waits this much longer, a few megabytes at most.
YOUNG_GENERATION_THRESHOLD = 20_000

_lock = threading.Lock()


def gc_settle_after_startup() -> None:
    """Freeze what the process holds now and raise the young generation's threshold. Call when startup's
    objects are built (again after something built later at startup, such as a model SDK's client: each call
    freezes what is new since)."""
    with _lock:
        gc.collect()
        gc.freeze()
        _, middle, old = gc.get_threshold()
        gc.set_threshold(YOUNG_GENERATION_THRESHOLD, middle, old)
