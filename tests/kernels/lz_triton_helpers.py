"""Helpers shared by the Triton kernel tests: a stand-in for a kernel launch, and compiling a kernel for sm90
without a GPU. Named uniquely because test directories are not packages."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


class LaunchRecorder:
    """Stands in for a Triton kernel: records what the wrapper would launch it with (``kernel[grid](...)``)."""

    def __init__(self) -> None:
        self.calls: list[tuple[tuple, dict]] = []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.calls.append((args, kwargs))

        return launch


def compiles_for_sm90(script: str) -> None:
    """Run ``script`` (which compiles kernels with ``triton.compile(..., target=GPUTarget("cuda", 90, 32))`` and
    prints "compiled") in a process without TRITON_INTERPRET: Triton's own ptxas builds for a GPU this machine
    need not have, so the code paths the CPU interpreter never takes are compiled in CI."""
    pytest.importorskip("triton.backends.nvidia")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0 and "compiled" in out.stdout, out.stderr[-3000:]
