"""The tenant's daily token budget: what runs spend, counted per UTC day.

The counter lives in Redis (one INCRBY per model call); Postgres stays the source of truth: a missing
day counter (Redis restarted) is rebuilt from the runs table, plus the manual compactions (which have no
run; an automatic one's tokens are its run's).
"""

import math
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

from django.db.models import Sum

from beamclaw_project.errors import LimitExceeded
from beamclaw_project.infra.redis import ScriptCall, redis_client, redis_script
from sessions.models import Compaction, Run


def _human(seconds: int) -> str:
    hours, rest = divmod(seconds, 3600)
    minutes = math.ceil(rest / 60)
    return f"{hours}h {minutes}m" if hours else f"{minutes}m"


def _day_key(tenant_id, day: datetime) -> str:
    return f"bc:tokens:{tenant_id}:{day:%Y%m%d}"


def _today() -> datetime:
    return datetime.now(dt_timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)


def tokens_used_today(*, tenant_id) -> int:
    day = _today()
    client = redis_client()
    cached = client.get(_day_key(tenant_id, day))
    if cached is not None:
        return int(cached)
    totals = Run.objects.filter(tenant_id=tenant_id, created_at__gte=day).aggregate(
        i=Sum("input_tokens"), o=Sum("output_tokens")
    )
    used = (totals["i"] or 0) + (totals["o"] or 0)
    manual = Compaction.objects.filter(
        session__tenant_id=tenant_id, trigger=Compaction.Trigger.MANUAL, created_at__gte=day
    ).values_list("usage", flat=True)
    used += sum(int(usage.get("input_tokens") or 0) + int(usage.get("output_tokens") or 0) for usage in manual)
    # Another process may have counted meanwhile; keep whichever got there first.
    client.set(_day_key(tenant_id, day), used, ex=2 * 86400, nx=True)
    return int(client.get(_day_key(tenant_id, day)) or used)


# Adds to the day's counter only if it is there (one round trip per model call).
_ADD_IF_COUNTED = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.call('INCRBY', KEYS[1], ARGV[1])
end
return false
"""


def record_tokens(*, tenant_id, tokens: int) -> None:
    if tokens <= 0:
        return
    source, keys, args = record_tokens_call(tenant_id=tenant_id, tokens=tokens)
    record_tokens_counted(tenant_id=tenant_id, result=redis_script(source)(keys=keys, args=args))


def record_tokens_call(*, tenant_id, tokens: int) -> ScriptCall:
    """record_tokens, to send with other calls (infra/redis.redis_scripts_call); hand its result to
    record_tokens_counted."""
    return _ADD_IF_COUNTED, [_day_key(tenant_id, _today())], [tokens]


def record_tokens_counted(*, tenant_id, result) -> None:
    if result is None:
        tokens_used_today(tenant_id=tenant_id)  # seeds the counter from Postgres, which includes these tokens


def check_token_budget(*, tenant) -> None:
    budget = tenant.daily_token_budget
    if not budget:
        return
    used = tokens_used_today(tenant_id=tenant.pk)
    if used >= budget:
        reset = _today() + timedelta(days=1)
        seconds = int((reset - datetime.now(dt_timezone.utc)).total_seconds()) + 1
        raise LimitExceeded(
            f"Daily token budget of {budget} tokens is used up ({used} used). "
            f"It resets at {reset:%Y-%m-%d} 00:00 UTC, in {_human(seconds)}.",
            code="token_budget_exceeded",
            retry_after=seconds,
        )
