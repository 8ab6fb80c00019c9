"""The built-in configs, one YAML file each; :func:`names` lists them without importing anything heavy."""

from __future__ import annotations

from importlib import resources


def names() -> list[str]:
    """Names of the built-in configs (``demo``, ``tiny``, ...)."""
    return sorted(p.name[:-5] for p in resources.files(__name__).iterdir() if p.name.endswith(".yaml"))
