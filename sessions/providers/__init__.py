"""Model providers, chosen by name (`Agent.provider`). The run engine only ever calls `get_provider`."""

from sessions.providers.registry import get_provider, provider_names, register_provider

__all__ = ["get_provider", "provider_names", "register_provider"]
