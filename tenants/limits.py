"""The per-key request rate: a Redis counter per key and minute (one INCR per request). The daily
token budget, which counts what runs spent, is the run engine's (sessions/runs/budget.py)."""

import math
import time

from beamclaw_project.errors import LimitExceeded
from beamclaw_project.infra.redis import CONNECTION_LOST, HeldCallSent, counter_incr_call, redis_client

# The window's counter outlives its minute by a second: a request at its very end still finds it.
_COUNTER_TTL_SECONDS = 61


class RequestCounted:
    """A request counted against its key's rate limit, sent to Redis without waiting: the key is looked up in
    Postgres while Redis counts. The counter is the key's by its hash, the key's row not being known yet (a
    request with a key nobody has leaves no counter: `forget`). Used as a context manager."""

    def __init__(self, key_hash: str):
        self.at = time.time()
        self.window = int(self.at // 60)
        self.counter = f"bc:rate:{key_hash}:{self.window}"
        self._count: int | None = None
        self._sent = HeldCallSent(*counter_incr_call(self.counter, ttl_seconds=_COUNTER_TTL_SECONDS))

    def count(self) -> int:
        """This minute's requests with the key, this one included."""
        if self._count is None:
            self._count = int(self._sent.result())
        return self._count

    def forget(self) -> None:
        """No key has this hash: drop its counter rather than keep one for every key a client made up."""
        try:
            self.count()
            redis_client().delete(self.counter)
        except CONNECTION_LOST:
            pass  # Redis is away: no counter to drop, and the request is refused for its key all the same

    def check(self, *, api_key) -> None:
        """Raise LimitExceeded, with the seconds left in the window, if the key is over its rate this minute."""
        limit = api_key.effective_rate_limit
        if limit and self.count() > limit:
            retry_after = max(1, math.ceil((self.window + 1) * 60 - self.at))
            raise LimitExceeded(
                f"Rate limit of {limit} requests per minute for this API key exceeded; retry in {retry_after}s.",
                code="rate_limited",
                retry_after=retry_after,
            )

    def __enter__(self) -> "RequestCounted":
        return self

    def __exit__(self, *exc_info) -> None:
        self._sent.__exit__(*exc_info)
