"""Server processes freeze what they built at startup and collect young objects less often
(beamclaw_project/infra/gc_tuning.py): cyclic garbage made while serving must still be freed."""

import gc
import weakref

from beamclaw_project.infra.gc_tuning import YOUNG_GENERATION_THRESHOLD, gc_settle_after_startup


class _Node:
    pass


def test_after_settling_startup_objects_are_frozen_and_cycles_made_later_are_still_freed():
    threshold = gc.get_threshold()
    try:
        gc_settle_after_startup()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold()[0] == YOUNG_GENERATION_THRESHOLD

        cycle = _Node()
        cycle.self = cycle
        alive = weakref.ref(cycle)
        del cycle
        # Containers that stay allocated (a request's worth, several times over) trigger a collection.
        kept = [[] for _ in range(YOUNG_GENERATION_THRESHOLD * 3)]
        assert alive() is None, "a reference cycle made after startup was never collected"
        del kept
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
