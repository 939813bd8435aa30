"""Idempotency-Key for the POSTs that start work (docs/gateway.md, "Retries and idempotency").

A client that sends `Idempotency-Key: <key>` may repeat the request as often as it likes within
IDEMPOTENCY_TTL: every repeat gets the run (or tool invocation) the first one started, and no message is
added twice. Invariants:

- a key belongs to one tenant and one endpoint; reusing it with another request (another body, session or
  queue header) is a conflict (409), since answering with the first request's result would be a lie;
- the key's row is written in the same transaction as the work it records, so a request that fails
  (bad input, limit reached) leaves no trace and may simply be retried under the same key;
- two concurrent first attempts serialise on the unique index: the loser waits for the winner's commit,
  then replays it.
"""

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable

from django.db import IntegrityError, transaction
from django.utils import timezone

from beamclaw_project.errors import Conflict, InvalidInput
from sessions.models import IdempotencyKey, Run

IDEMPOTENCY_TTL = timedelta(hours=24)
HEADER = "Idempotency-Key"
# Visible ASCII only: a key is an opaque token, and anything else is more likely a client bug.
_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")


class IdempotencyKeyInvalid(InvalidInput):
    field = HEADER


class IdempotencyConflict(Conflict):
    """The key was used for another request."""

    field = HEADER


def idempotency_key_from(headers) -> str | None:
    """The request's Idempotency-Key, None without one; raises IdempotencyKeyInvalid for a malformed one."""
    value = headers.get(HEADER)
    if value is None:
        return None
    if not _KEY.match(value):
        raise IdempotencyKeyInvalid(
            f"{HEADER} must be 1 to 255 visible ASCII characters (no spaces), e.g. a UUID."
        )
    return value


def request_fingerprint(*parts) -> str:
    """A digest of what makes two requests the same request (JSON-able parts; key order ignored)."""
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass
class Claim:
    record: IdempotencyKey
    replay: bool  # True: an earlier request under this key did the work; answer with record's result


def idempotency_claim(*, tenant_id, endpoint: str, key: str, fingerprint: str) -> Claim:
    """Inside the caller's transaction: either a new record (do the work, then `idempotency_record`) or
    the earlier request's record to replay. Raises IdempotencyConflict for a different request."""
    assert transaction.get_connection().in_atomic_block, "claim and work must commit together"
    try:
        with transaction.atomic():
            record = IdempotencyKey.objects.create(tenant_id=tenant_id, endpoint=endpoint, key=key, fingerprint=fingerprint)
        return Claim(record=record, replay=False)
    except IntegrityError:
        pass
    record = IdempotencyKey.objects.select_for_update().get(tenant_id=tenant_id, endpoint=endpoint, key=key)
    if record.created_at < timezone.now() - IDEMPOTENCY_TTL:
        # Expired: the key starts a new life with this request.
        record.fingerprint, record.run, record.invocation_id, record.response = fingerprint, None, None, {}
        record.created_at = timezone.now()
        record.save()
        return Claim(record=record, replay=False)
    if record.fingerprint != fingerprint:
        raise IdempotencyConflict(
            f"{HEADER} {key!r} was already used for a different request in the last 24 hours; "
            "use a new key for a new request."
        )
    return Claim(record=record, replay=True)


def idempotency_record(claim: Claim, *, run=None, invocation_id=None, response: dict | None = None) -> None:
    record = claim.record
    record.run = run
    record.invocation_id = invocation_id
    record.response = response or {}
    record.save(update_fields=["run", "invocation_id", "response"])


def idempotent_run(*, tenant_id, endpoint: str, key: str | None, request_parts: tuple, start: Callable[[], Run]) -> Run:
    """`start()` once per key: the run it returns, or, for a repeat, the run the first request started.
    `request_parts` make two requests the same request (digested only when there is a key)."""
    if key is None:
        return start()
    with transaction.atomic():
        claim = idempotency_claim(
            tenant_id=tenant_id, endpoint=endpoint, key=key, fingerprint=request_fingerprint(*request_parts)
        )
        if claim.replay:
            return claim.record.run
        run = start()
        idempotency_record(claim, run=run)
        return run


def idempotency_purge() -> int:
    """Delete keys past their lifetime (housekeeping)."""
    deleted, _ = IdempotencyKey.objects.filter(created_at__lt=timezone.now() - IDEMPOTENCY_TTL).delete()
    return deleted
