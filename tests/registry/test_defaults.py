"""Process-wide registries: built on first use by the factory a higher floor installed, once."""

from __future__ import annotations

import subprocess
import sys

import pytest

from layerzero.errors import LayerZeroError
from layerzero.registry.defaults import LazyDefault


def test_factory_runs_once_on_first_use():
    calls = []
    default = LazyDefault("thing", lambda: calls.append("empty") or "empty")
    default.install(lambda: calls.append("built") or ["built"])
    assert calls == []
    first = default.get()
    assert default.get() is first and first == ["built"] and calls == ["built"]


def test_installing_after_first_use_is_refused():
    default = LazyDefault("thing", list)
    default.get()
    with pytest.raises(LayerZeroError, match="thing is already in use"):
        default.install(lambda: [1])


def test_registry_floor_alone_starts_empty_and_the_package_root_installs_the_catalogue():
    """Loaded without the package root (which installs the built-in catalogue), the registry floor
    knows no kernels and imports nothing from ``layerzero.kernels``."""
    code = (
        "import importlib.util, sys, types\n"
        "root = types.ModuleType('layerzero'); root.__path__ = [sys.argv[1]]; sys.modules['layerzero'] = root\n"
        "from layerzero.registry import get_global_backend_registry, get_global_kernel_registry\n"
        "assert len(get_global_kernel_registry()) == 0 and not get_global_backend_registry().all()\n"
        "assert not [m for m in sys.modules if m.startswith('layerzero.kernels')]\n"
    )
    import layerzero

    r = subprocess.run([sys.executable, "-c", code, layerzero.__path__[0]], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    from layerzero.registry import get_global_backend_registry, get_global_kernel_registry

    assert "torch_rms_norm" in get_global_kernel_registry() and "liger" in get_global_backend_registry()
