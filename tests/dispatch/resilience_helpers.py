"""Shared pieces of the resilience tests: test kernels (good, raising, NaN, wrong shape) registered in a
test-local registry, a fake clock, and the ways real deployments rewrite a config file."""

from __future__ import annotations

import os
import time

import torch

from layerzero.kernels import reference
from layerzero.registry import BackendRegistry, BackendSpec, KernelRegistry, KernelSpec

BACKEND = "lz_test"


class FakeClock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


def ref_rms_norm(x, weight=None, eps=1e-6, offset=0.0, casting="llama", residual=None):
    return reference.rms_norm(x=x, weight=weight, eps=eps, offset=offset, casting=casting, residual=residual)


def good_kernel(name: str):
    """A correct rms_norm that counts its calls."""

    def impl(x, weight=None, eps=1e-6, offset=0.0, casting="llama", residual=None):
        impl.calls += 1
        return ref_rms_norm(x, weight, eps, offset, casting, residual)

    impl.calls = 0
    impl.__name__ = name
    return impl


class FaultyKernel:
    """An rms_norm whose failure mode can be switched: "raise", "nan", "shape" or "ok"."""

    def __init__(self, mode: str = "raise"):
        self.mode = mode
        self.calls = 0

    def __call__(self, x, weight=None, eps=1e-6, offset=0.0, casting="llama", residual=None):
        self.calls += 1
        out = ref_rms_norm(x, weight, eps, offset, casting, residual)
        if self.mode == "raise":
            raise RuntimeError("injected kernel fault")
        if self.mode == "nan":
            out = out.clone()
            out.view(-1)[0] = float("nan")
            return out
        if self.mode == "shape":
            return out[..., :-1]
        return out


def backends() -> BackendRegistry:
    return BackendRegistry([BackendSpec(BACKEND, description="always available test backend")])


def registry(*specs: KernelSpec) -> KernelRegistry:
    return KernelRegistry(specs)


def spec(kernel_id: str, impl, priority: int = 50, reference_tag: bool = False) -> KernelSpec:
    return KernelSpec(kernel_id, "rms_norm", BACKEND, impl, priority=priority,
                      tags={"reference"} if reference_tag else ())


def version_kernels(n: int) -> list[KernelSpec]:
    """One correct kernel per config version, so result.kernel_id names the version that served a call."""
    return [spec(f"lz_v{i}", good_kernel(f"lz_v{i}"), priority=10) for i in range(n)]


def lock_policy_text(kernel_id: str, note: str = "") -> str:
    # The lock is a quoted flow mapping: any truncation inside it is a YAML syntax error, never a valid
    # policy without the lock.
    return f'version: "1.0"\n# {note}\nkernel_locks: {{"rms_norm": "{kernel_id}"}}\n'


# ---------------------------------------------------------------------------- ways to write a file
def write_inplace(path: str, text: str) -> None:
    """`echo > file`: truncate, then write (a reader can see it empty or partial)."""
    with open(path, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def write_atomic(path: str, text: str) -> None:
    """An editor's save: write a temp file next to it, rename over the original."""
    tmp = f"{path}.tmp{os.getpid()}.{time.monotonic_ns()}"
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


class ConfigMapDir:
    """Kubernetes ConfigMap volume layout: <dir>/kernels.yaml -> ..data/kernels.yaml, ..data -> ..<ts>/.
    An update writes a fresh ..<ts> directory and swaps the ..data symlink with an atomic rename."""

    def __init__(self, root: str, name: str = "kernels.yaml"):
        self.root = root
        self.name = name
        self.path = os.path.join(root, name)
        self.n = 0

    def write(self, text: str) -> None:
        self.n += 1
        ts = f"..2026_11_24_00_00_{self.n:02d}.{os.getpid()}"
        os.mkdir(os.path.join(self.root, ts))
        with open(os.path.join(self.root, ts, self.name), "w") as fh:
            fh.write(text)
        tmp_link = os.path.join(self.root, "..data_tmp")
        os.symlink(ts, tmp_link)
        os.replace(tmp_link, os.path.join(self.root, "..data"))
        if not os.path.islink(self.path):
            os.symlink(os.path.join("..data", self.name), self.path)
