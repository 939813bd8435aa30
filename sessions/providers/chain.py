"""Calling the agent's model: retries with backoff, then its fallbacks, which may be on other providers.

Invariants:
- Nothing is retried or handed to a fallback once reply text was streamed: the engine published it at
  once, and a second attempt would repeat (or contradict) what the user already saw. Such a failure ends
  the call, saying the reply broke off.
- Retryable errors (overload, rate limit, 5xx, network, timeout) are retried on the same model with
  exponential backoff (PROVIDER_MAX_RETRIES, PROVIDER_RETRY_BASE_SECONDS); an abort is noticed during the
  wait. The next fallback is tried when a model stays unavailable (retryable) or does not exist
  (not_found); any other error (a bad key, a refused request) is a configuration to fix and ends the chain.
- `Agent.fallbacks` entries are model ids of the agent's own provider, reached like the agent's model (its
  `base_url` and `api_key`), or `{"provider", "model"}`, reached as the deployment configures that provider
  (its environment): a tenant's endpoint and key belong to the agent's provider only, and an object entry
  naming the agent's own provider is how an agent on its own server falls back to the deployment's.
"""

import logging
import random
import time
from dataclasses import dataclass, replace
from typing import Callable

from django.conf import settings
from rest_framework.exceptions import ValidationError

from sessions.providers.base import Aborted, Completion, CompletionRequest, ProviderError
from sessions.providers.endpoints import base_url_clean
from sessions.providers.registry import get_provider, provider_names

# What the agent API validates with (tenants/serializers.py).
__all__ = ["base_url_clean", "chain_providers", "chain_targets", "complete", "fallbacks_clean"]

logger = logging.getLogger(__name__)

MAX_FALLBACKS = 8


@dataclass(frozen=True)
class Target:
    provider: str
    model: str
    own_endpoint: bool  # the agent's base_url / api_key apply

    def __str__(self) -> str:
        return f"{self.provider}:{self.model}"


def chain_targets(agent) -> list[Target]:
    """The agent's model, then its fallbacks, in the order they are tried."""
    targets = [Target(agent.provider, agent.model, True)]
    for entry in agent.fallbacks or ():
        if isinstance(entry, str):
            targets.append(Target(agent.provider, entry, True))
        elif isinstance(entry, dict):
            targets.append(Target(str(entry.get("provider")), str(entry.get("model")), False))
    return targets


def chain_providers(agent) -> list[str]:
    """Every provider a run of the agent may call, the agent's own first."""
    return list(dict.fromkeys(target.provider for target in chain_targets(agent)))


def complete(agent, request: CompletionRequest, *, on_text: Callable[[str], None],
             should_abort: Callable[[], bool]) -> Completion:
    targets = chain_targets(agent)
    max_retries = settings.BEAMCLAW["PROVIDER_MAX_RETRIES"]
    base_delay = settings.BEAMCLAW["PROVIDER_RETRY_BASE_SECONDS"]
    tried: list[str] = []
    last_error: ProviderError | None = None
    for target in targets:
        tried.append(str(target))
        attempt_request = replace(
            request, model=target.model,
            base_url=agent.base_url if target.own_endpoint else "",
            api_key=agent.api_key if target.own_endpoint else "",
        )
        for attempt in range(max_retries + 1):
            emitted = False

            def emit(text: str) -> None:
                nonlocal emitted
                emitted = True
                on_text(text)

            try:
                return get_provider(target.provider).stream(attempt_request, on_text=emit, should_abort=should_abort)
            except Aborted:
                raise
            except ProviderError as error:
                if should_abort():
                    # Stopped while reading (a drain cuts the connection): not the provider's failure.
                    raise Aborted() from error
                if error.kind == "unknown":
                    logger.error("provider call to %s failed unexpectedly", target, exc_info=error)
                else:
                    logger.warning("provider call to %s failed (%s): %s", target, error.kind, error.message)
                if emitted:
                    raise ProviderError(
                        f"{error.message} The reply broke off after it had started streaming.",
                        kind=error.kind,
                        status=error.status,
                    ) from error
                last_error = error
                if not error.retryable or attempt == max_retries:
                    break
                delay = base_delay * (2**attempt) * (0.5 + random.random())
                logger.warning("provider %s (%s), retrying in %.2fs", error.kind, target, delay)
                _sleep(delay, should_abort)
        if last_error is not None and not (last_error.retryable or last_error.kind == "not_found"):
            break
    assert last_error is not None
    if len(targets) > 1:
        raise ProviderError(
            f"{last_error.message} (tried models: {', '.join(tried)})",
            kind=last_error.kind,
            status=last_error.status,
        )
    raise last_error


def _sleep(delay: float, should_abort: Callable[[], bool]) -> None:
    deadline = time.monotonic() + delay
    while (remaining := deadline - time.monotonic()) > 0:
        if should_abort():
            raise Aborted()
        time.sleep(min(remaining, 0.1))


def fallbacks_clean(value) -> list:
    """`Agent.fallbacks` as the API takes it: a list of model ids (non-empty strings, the agent's own
    provider) or objects with exactly `provider` (a registered one) and `model`. Raises a ValidationError
    naming the entry at fault."""
    if not isinstance(value, list):
        raise ValidationError('Must be a list of model ids or {"provider": ..., "model": ...} objects.')
    if len(value) > MAX_FALLBACKS:
        raise ValidationError(f"At most {MAX_FALLBACKS} fallbacks (each may be retried before the next).")
    cleaned: list = []
    for i, entry in enumerate(value):
        where = f"fallbacks[{i}]"
        if isinstance(entry, str):
            cleaned.append(_model_id(entry, where))
            continue
        if not isinstance(entry, dict):
            raise ValidationError(f'{where}: must be a model id or a {{"provider": ..., "model": ...}} object.')
        extra = sorted(set(entry) - {"provider", "model"})
        if extra:
            raise ValidationError(
                f"{where}: unexpected field {extra[0]!r}; an entry has only provider and model (a fallback on "
                "another provider uses that provider's deployment endpoint and key)."
            )
        provider = entry.get("provider")
        if not isinstance(provider, str) or not provider:
            raise ValidationError(f"{where}.provider: required, one of {', '.join(provider_names())}.")
        if provider not in provider_names():
            raise ValidationError(
                f"{where}.provider: unknown provider {provider!r}. Supported: {', '.join(provider_names())}."
            )
        cleaned.append({"provider": provider, "model": _model_id(entry.get("model"), f"{where}.model")})
    return cleaned


def _model_id(value, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(f"{where}: must be a non-empty model id.")
    if len(value) > 128:
        raise ValidationError(f"{where}: a model id has at most 128 characters.")
    return value.strip()
