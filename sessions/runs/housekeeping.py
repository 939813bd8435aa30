"""The run engine's housekeeping chores (registered in sessions/apps.py, run by every worker).

- `reap_orphaned_runs`: re-enqueue steps whose worker died (no lease in Redis) or that were lost on their
  way to a worker (a lease `queued` too long), and start queued runs whose session has nothing active
  (their start was lost with a crashed transaction's after-commit);
- `tool_phase.tool_calls_reap`: keep the tools marker on runs with open calls, recover their calls.
"""

import logging
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from sessions.models import Run
from sessions.runs.kernel import runs_stranded, step_enqueue, step_resend
from sessions.runs.lifecycle import session_advance

logger = logging.getLogger(__name__)


def reap_orphaned_runs() -> int:
    running = list(Run.objects.filter(status=Run.Status.RUNNING).values_list("pk", "step", "tenant__slug")[:5000])
    orphans, lost = map(set, runs_stranded([(pk, slug) for pk, _, slug in running]))
    if orphans:
        # Read again after their leases: a run that ended after the first read gave its lease back after its
        # end's commit, so it shows ended now. (Taken for an orphan, it was sent a step it had no use for, and
        # logged as having lost its worker.)
        orphans &= set(Run.objects.filter(pk__in=orphans, status=Run.Status.RUNNING).values_list("pk", flat=True))
    reaped = 0
    for pk, step, slug in running:
        if pk in orphans and step_enqueue(pk, step, slug, only_if_free=True):
            logger.warning("run %s step %s lost its worker; re-enqueued", pk, step)
            reaped += 1
        elif pk in lost and step_resend(pk, step, slug):
            logger.warning("run %s step %s was lost on its way to a worker; sent again", pk, step)
            reaped += 1
    stale = timezone.now() - timedelta(seconds=settings.BEAMCLAW["RUN_LEASE_SECONDS"])
    waiting_sessions = (
        Run.objects.filter(status=Run.Status.QUEUED, created_at__lt=stale)
        .exclude(session__runs__status__in=Run.ACTIVE_STATUSES)
        .values_list("session_id", flat=True)
        .distinct()[:1000]
    )
    for session_id in list(waiting_sessions):
        session_advance(session_id=session_id)
    return reaped
