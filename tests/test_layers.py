"""The layer contract (.importlinter) names modules one by one, so a new module that nobody put in a layer
would go unchecked: every module of the apps must be in a layer, or inside a package that is."""

import configparser
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Read by Django, not imported by code: no layer to be in.
UNLAYERED = {"beamclaw_project.settings"}


def layered_modules() -> set[str]:
    config = configparser.ConfigParser()
    config.read(ROOT / ".importlinter")
    layers = config["importlinter:contract:layers"]["layers"]
    return {name.strip() for line in layers.splitlines() for name in line.replace("|", ":").split(":") if name.strip()}


def app_modules(packages: list[str]):
    for package in packages:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if "migrations" in parts or parts[-1] == "__init__":
                continue
            yield ".".join(parts)


def test_every_module_is_in_a_layer():
    config = configparser.ConfigParser()
    config.read(ROOT / ".importlinter")
    packages = config["importlinter"]["root_packages"].split()
    layered = layered_modules()

    def covered(module: str) -> bool:
        parts = module.split(".")
        return any(".".join(parts[:i]) in layered for i in range(1, len(parts) + 1))

    missing = sorted(m for m in app_modules(packages) if m not in UNLAYERED and not covered(m))
    assert not missing, f"put these modules in a layer of .importlinter: {missing}"
