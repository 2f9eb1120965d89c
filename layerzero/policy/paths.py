"""Where the shipped default policy lives: found like every packaged data file (:mod:`layerzero.data_files`),
so that ``load_policy(None)`` works the same from a wheel and from a clone."""

from __future__ import annotations

from pathlib import Path

from layerzero.data_files import DEFAULT_POLICY, find_data_file

__all__ = ["default_policy_path"]


def default_policy_path() -> Path | None:
    """The shipped default policy: package data when installed, else the repository's ``configs/``."""
    return find_data_file(DEFAULT_POLICY)
