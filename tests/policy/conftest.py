"""Fixtures of the policy tests."""

from __future__ import annotations

import pytest
from lz_policy_registry import make_registry

from layerzero.registry import KernelRegistry


@pytest.fixture
def registry() -> KernelRegistry:
    return make_registry()
