"""Calling the agent's model, with retries and then its fallbacks."""

from typing import Callable

from sessions.providers.base import Completion, CompletionRequest
from sessions.providers.registry import get_provider


def complete(agent, request: CompletionRequest, *, on_text: Callable[[str], None],
             should_abort: Callable[[], bool]) -> Completion:
    fallbacks = tuple(f for f in agent.fallbacks or () if isinstance(f, str))
    return get_provider(agent.provider).stream(
        CompletionRequest(**{**request.__dict__, "fallbacks": fallbacks}), on_text=on_text, should_abort=should_abort
    )


def fallbacks_clean(value) -> list:
    """`Agent.fallbacks` as the API takes it; raises ValueError... (to be completed)."""
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        from rest_framework.exceptions import ValidationError
        raise ValidationError("Must be a list of non-empty strings.")
    return value
