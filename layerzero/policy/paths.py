"""Where the shipped default policy lives.

Installed wheels carry it as package data; a source checkout keeps it in ``configs/``. Both are looked up
so that ``load_policy(None)`` works the same from a wheel and from a clone.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["default_policy_path"]

_PACKAGE_DEFAULT = Path(__file__).resolve().parent.parent / "data" / "configs" / "default_policy.yaml"
_REPO_DEFAULT = Path(__file__).resolve().parents[2] / "configs" / "default_policy.yaml"


def default_policy_path() -> Path | None:
    """The shipped default policy: package data when installed, else the repository's ``configs/``."""
    for path in (_PACKAGE_DEFAULT, _REPO_DEFAULT):
        if path.is_file():
            return path
    return None
