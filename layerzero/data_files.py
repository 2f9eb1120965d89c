"""The one way LayerZero finds a data file it ships or that a user configures.

Several files are data rather than code: the default policy, the per-model rules (``configs/models.yaml``),
and later cost tables. Each is looked up the same way, so an installed wheel, a source checkout and a
server pointing an environment variable at its own copy all behave alike:

1. the first environment variable in ``env_var`` that is set names the file (returned even when it does
   not exist, so the caller can report the user's path instead of silently using the shipped one);
2. the package data ``layerzero/data/<name>`` (found through :mod:`importlib.resources`, so it works
   wherever the package is installed);
3. in a source checkout, ``<repository>/<name>`` (``layerzero/data`` links there; the fallback covers a
   checkout where the links were not created).

This module sits at the bottom layer: it imports nothing from LayerZero.
"""

from __future__ import annotations

import importlib.resources
import os
from pathlib import Path
from typing import Iterator, Sequence

__all__ = ["DEFAULT_POLICY", "MODEL_RULES", "configured_data_file", "find_data_file", "packaged_data_file",
           "packaged_data_files"]

DEFAULT_POLICY = "configs/default_policy.yaml"
MODEL_RULES = "configs/models.yaml"

_PACKAGE = "layerzero"
_DATA_DIR = "data"


def configured_data_file(env_var: str | Sequence[str]) -> Path | None:
    """The path named by the first of ``env_var`` that is set to a non-empty value, else None."""
    names = (env_var,) if isinstance(env_var, str) else tuple(env_var)
    for name in names:
        value = os.environ.get(name)
        if value:
            return Path(value)
    return None


def packaged_data_file(name: str) -> Path | None:
    """The shipped file ``name`` (a ``/``-separated path under ``layerzero/data``), else None."""
    return next((p for p in _shipped_paths(name) if p.is_file()), None)


def find_data_file(name: str, *, env_var: str | Sequence[str] | None = None, packaged: bool = True) -> Path | None:
    """The configured file (``env_var``), else the shipped ``name`` (unless ``packaged`` is False), else None."""
    if env_var is not None:
        configured = configured_data_file(env_var)
        if configured is not None:
            return configured
    return packaged_data_file(name) if packaged else None


def packaged_data_files(folder: str, suffix: str) -> list[Path]:
    """The shipped files of ``folder`` (under ``layerzero/data``) whose names end in ``suffix``, sorted by name:
    the package data when it has any, else the source checkout's folder (the same order as
    :func:`packaged_data_file`)."""
    for root in _shipped_paths(folder):
        if root.is_dir():
            found = sorted((f for f in root.iterdir() if f.name.endswith(suffix) and f.is_file()), key=lambda f: f.name)
            if found:
                return found
    return []


def _shipped_paths(name: str) -> Iterator[Path]:
    """Where a shipped path can be, in the order looked up (lazily: a caller stops at the first it accepts):
    the package data, then, in a source checkout, the repository's own copy."""
    parts = [p for p in name.split("/") if p]
    try:
        resource = importlib.resources.files(_PACKAGE).joinpath(_DATA_DIR, *parts)
    except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError):
        resource = None
    if isinstance(resource, Path):
        yield resource
    repo = Path(__file__).resolve().parent.parent
    if (repo / "pyproject.toml").is_file():
        yield repo.joinpath(*parts)
