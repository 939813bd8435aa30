"""The provider registry: a provider is registered under a name and looked up by the agent's `provider`.

A provider module calls `register_provider` when it is imported. The built-in ones are imported on the
first lookup (the web process never needs the SDKs); an operator's plug-ins (BEAMCLAW_PLUGINS,
beamclaw_project/apps.py) at start-up. A plug-in may replace a built-in: registering is first come,
built-ins never overwrite.
"""

import logging
from importlib import import_module
from typing import Callable

from sessions.providers.base import SAMPLING_PARAMS, Provider, ProviderError

logger = logging.getLogger(__name__)

_BUILTIN_MODULES = ("sessions.providers.anthropic", "sessions.providers.openai")
_FACTORIES: dict[str, Callable[[], Provider]] = {}
_loaded = False


def register_provider(name: str, factory: Callable[[], Provider], *, builtin: bool = False) -> None:
    if builtin and name in _FACTORIES:
        return  # an operator's plug-in replaced it
    _FACTORIES[name] = factory


def provider_names() -> list[str]:
    """Every registered provider, for validating and offering `Agent.provider`."""
    _load_modules()
    return sorted(_FACTORIES)


def get_provider(name: str) -> Provider:
    _load_modules()
    factory = _FACTORIES.get(name)
    if factory is None:
        raise ProviderError(
            f"Unknown provider '{name}'. Supported: {', '.join(sorted(_FACTORIES)) or 'none'}. Set the agent's "
            "provider to one of them, or add the module that registers it to BEAMCLAW_PLUGINS.",
            kind="bad_request",
        )
    return factory()


def provider_sampling(name: str) -> frozenset[str] | None:
    """The sampling parameters provider `name` takes (Provider.sampling), or None if no such provider is
    registered (its runs fail saying so)."""
    try:
        provider = get_provider(name)
    except ProviderError:
        return None
    return frozenset(getattr(provider, "sampling", SAMPLING_PARAMS))


def providers_warm_up() -> None:
    """Import the built-in providers and let each build what its first call would (`warm_up()` in its
    module): a worker does it beside its start-up, so the first run's step does not pay for it."""
    _load_modules()
    for path in _BUILTIN_MODULES:
        warm_up = getattr(import_module(path), "warm_up", None)
        try:
            if warm_up is not None:
                warm_up()
        except Exception as exc:  # noqa: BLE001 - only a head start: the first call builds it again
            logger.warning("could not warm up %s (%r); its first call sets it up instead", path, exc)


def _load_modules() -> None:
    global _loaded
    if not _loaded:
        for path in _BUILTIN_MODULES:
            import_module(path)
        _loaded = True
