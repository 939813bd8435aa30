"""The provider registry: a provider is registered under a name and looked up by the agent's `provider`."""

from typing import Callable

from sessions.providers.base import Provider, ProviderError

_FACTORIES: dict[str, Callable[[], Provider]] = {}


def register_provider(name: str, factory: Callable[[], Provider]) -> None:
    _FACTORIES[name] = factory


def get_provider(name: str) -> Provider:
    if name not in _FACTORIES:
        _load_builtins()
    factory = _FACTORIES.get(name)
    if factory is None:
        supported = ", ".join(sorted(_FACTORIES)) or "none"
        raise ProviderError(f"Unknown provider '{name}'. Supported: {supported}.", kind="bad_request")
    return factory()


def _load_builtins() -> None:
    from sessions.providers import anthropic  # noqa: F401 - registers itself
