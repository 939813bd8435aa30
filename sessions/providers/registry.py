"""The provider registry: a provider is registered under a name and looked up by the agent's `provider`.

A provider module calls `register_provider` when it is imported. The built-in ones and the modules
named in BEAMCLAW_PROVIDER_MODULES (an operator's plug-ins) are imported on the first lookup, in that
order, so a plug-in may also replace a built-in. Lookups happen in the worker, so the setting must be
the same for every worker process.
"""

from importlib import import_module
from typing import Callable

from django.conf import settings

from sessions.providers.base import Provider, ProviderError

_BUILTIN_MODULES = ("sessions.providers.anthropic",)
_FACTORIES: dict[str, Callable[[], Provider]] = {}
_loaded = False


def register_provider(name: str, factory: Callable[[], Provider]) -> None:
    _FACTORIES[name] = factory


def get_provider(name: str) -> Provider:
    _load_modules()
    factory = _FACTORIES.get(name)
    if factory is None:
        raise ProviderError(
            f"Unknown provider '{name}'. Supported: {', '.join(sorted(_FACTORIES)) or 'none'}. Set the agent's "
            "provider to one of them, or add the module that registers it to BEAMCLAW_PROVIDER_MODULES.",
            kind="bad_request",
        )
    return factory()


def _load_modules() -> None:
    global _loaded
    if _loaded:
        return
    for path in _BUILTIN_MODULES:
        import_module(path)
    for path in settings.BEAMCLAW["PROVIDER_MODULES"]:
        try:
            import_module(path)
        except ImportError as exc:
            # Not cached as loaded: the next lookup tries again and reports the same cause.
            raise ProviderError(
                f"BEAMCLAW_PROVIDER_MODULES names '{path}', which could not be imported: {exc}.", kind="config"
            ) from exc
    _loaded = True
