"""The per-key request rate: a Redis counter per key and minute (one INCR per request). The daily
token budget, which counts what runs spent, is the run engine's (sessions/runs/budget.py)."""

import math
import time

from beamclaw_project.errors import LimitExceeded
from beamclaw_project.infra.redis import counter_incr


def check_rate_limit(*, api_key) -> None:
    """Fixed one-minute window per API key; raises LimitExceeded with the seconds left in the window."""
    limit = api_key.effective_rate_limit
    if not limit:
        return
    now = time.time()
    window = int(now // 60)
    key = f"bc:rate:{api_key.pk}:{window}"
    count = counter_incr(key, ttl_seconds=61)
    if count > limit:
        retry_after = max(1, math.ceil((window + 1) * 60 - now))
        raise LimitExceeded(
            f"Rate limit of {limit} requests per minute for this API key exceeded; retry in {retry_after}s.",
            code="rate_limited",
            retry_after=retry_after,
        )
