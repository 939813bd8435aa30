"""The composition root's app: loads the operator's plug-ins once every app is ready.

A plug-in is a Python module named in BEAMCLAW_PLUGINS that, when imported, registers what it adds:
a model provider (`sessions.providers.register_provider`), a tool (`tools.registry.register`), a
channel transport (`channels_app.transport.register_transport`). Every process (web, worker, beat)
imports the same list, so a worker runs what the web process accepted. A module that cannot be
imported stops the process at start-up with its name: failing later, run by run, would hide it.
"""

from importlib import import_module

from django.apps import AppConfig
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


class BeamclawConfig(AppConfig):
    name = "beamclaw_project"
    label = "beamclaw"
    verbose_name = "BeamClaw"

    def ready(self):
        for path in settings.BEAMCLAW["PLUGINS"]:
            try:
                import_module(path)
            except ImportError as exc:
                raise ImproperlyConfigured(f"BEAMCLAW_PLUGINS names '{path}', which could not be imported: {exc}") from exc
