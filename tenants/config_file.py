"""beamclaw.yaml: declarative configuration (filled in by the config work)."""
