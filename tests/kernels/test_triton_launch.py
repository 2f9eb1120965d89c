"""The Triton launch fast path: same specialisation -> the cached compiled kernel, anything else -> Triton.

On CPU a stand-in kernel plays Triton's parts (binder, compiled kernel, launcher), so the decisions are
checked without a GPU; the GPU tests run the real kernels through both paths and compare."""

from __future__ import annotations

import pytest
import torch

import layerzero.kernels.triton.launch as launch_mod
from layerzero.kernels import reference
from layerzero.kernels.triton.launch import cdiv, launch, next_power_of_2


def test_integer_helpers_match_triton():
    triton = pytest.importorskip("triton")
    for n in [0, 1, 2, 3, 4, 5, 31, 32, 33, 255, 256, 257, 2304, 9216, 1 << 20]:
        assert next_power_of_2(n) == triton.next_power_of_2(n), n
        for d in (1, 3, 16, 64):
            assert cdiv(n, d) == triton.cdiv(n, d), (n, d)


class _Compiled:
    """A compiled kernel: its launcher records what it was given."""

    function, packed_metadata = "fn", "meta"

    def __init__(self, calls: list) -> None:
        self.calls = calls

    def run(self, *args):
        self.calls.append(("fast", args))


class _Kernel:
    """A JIT kernel: binder (alignment of the tensor-like first argument decides the specialisation),
    ``kernel[grid](...)`` that 'compiles' one variant per specialisation and launches."""

    def __init__(self) -> None:
        self.calls: list = []
        self.compiled: dict = {}
        self.device_caches = {0: (None, None, None, None, self._bind)}

    @staticmethod
    def _bind(x, n, BLOCK=16, **options):
        bound = {"x": x, "n": n, "BLOCK": BLOCK}
        return bound, [("*fp32", "D" if x % 16 == 0 else ""), ("i32", "D" if n % 16 == 0 else ""), ("constexpr", BLOCK)], options

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            _, spec, options = self._bind(*args, **kwargs)
            self.calls.append(("triton", grid, args, kwargs))
            return self.compiled.setdefault((tuple(spec), tuple(options.items())), _Compiled(self.calls))
        return run


class _Hooks:
    def __init__(self) -> None:
        self.calls: list = []


class _Runtime:
    def __init__(self) -> None:
        self.launch_enter_hook, self.launch_exit_hook = _Hooks(), _Hooks()


@pytest.fixture
def fast(monkeypatch):
    """The fast path switched on with stand-ins for the current device and stream."""
    runtime = _Runtime()
    monkeypatch.setattr(launch_mod, "_state", {"enabled": True, "runtime": runtime, "device": lambda: 0,
                                               "stream": lambda device: 77})
    monkeypatch.setattr(launch_mod, "_compiled", {})
    return runtime


def _kinds(kernel: _Kernel) -> list[str]:
    return [c[0] for c in kernel.calls]


def test_a_repeated_specialisation_skips_tritons_path(fast):
    k = _Kernel()
    launch(k, (4,), 32, 64, BLOCK=16, num_warps=4)
    launch(k, (5, 2), 48, 128, BLOCK=16, num_warps=4)  # new values, same specialisation
    assert _kinds(k) == ["triton", "fast"]
    # the launcher gets Triton's arguments: grid padded to 3-d, stream, handles, no hooks, bound values
    assert k.calls[1][1] == (5, 2, 1, 77, "fn", "meta", None, None, None, 48, 128, 16)


@pytest.mark.parametrize("second", [
    ((33, 64), {"BLOCK": 16, "num_warps": 4}),   # misaligned pointer
    ((32, 65), {"BLOCK": 16, "num_warps": 4}),   # integer no longer divisible by 16
    ((32, 64), {"BLOCK": 32, "num_warps": 4}),   # another constexpr
    ((32, 64), {"BLOCK": 16, "num_warps": 8}),   # another launch option
], ids=["alignment", "divisibility", "constexpr", "option"])
def test_a_new_specialisation_takes_tritons_path(fast, second):
    k = _Kernel()
    launch(k, (1,), 32, 64, BLOCK=16, num_warps=4)
    args, kwargs = second
    launch(k, (1,), *args, **kwargs)
    launch(k, (1,), *args, **kwargs)
    assert _kinds(k) == ["triton", "triton", "fast"]


def test_tritons_path_when_a_launch_hook_is_installed(fast):
    k = _Kernel()
    launch(k, (1,), 32, 64)
    fast.launch_enter_hook.calls.append(print)
    launch(k, (1,), 32, 64)
    assert _kinds(k) == ["triton", "triton"]


def test_tritons_path_under_compile_and_when_disabled(fast, monkeypatch):
    k = _Kernel()
    launch(k, (1,), 32, 64)
    monkeypatch.setattr(launch_mod, "_compiling", lambda: True)
    launch(k, (1,), 32, 64)
    monkeypatch.setattr(launch_mod, "_compiling", lambda: False)
    launch_mod._state["enabled"] = False
    launch(k, (1,), 32, 64)
    assert _kinds(k) == ["triton", "triton", "triton"]


def test_a_launcher_of_another_shape_turns_the_fast_path_off(fast):
    k = _Kernel()
    launch(k, (1,), 32, 64)

    def refuse(*args):
        raise TypeError("launch() takes 14 positional arguments")

    next(iter(k.compiled.values())).run = refuse
    launch(k, (1,), 32, 64)
    assert _kinds(k) == ["triton", "triton"] and launch_mod._state["enabled"] is False


def test_objects_that_are_not_triton_kernels_are_called_as_given(fast):
    calls = []

    class Recorder:
        def __getitem__(self, grid):
            return lambda *a, **kw: calls.append((grid, a, kw))

    launch(Recorder(), (3,), 1, 2, X=3)
    launch(Recorder(), (3,), 1, 2, X=3)
    assert calls == [((3,), (1, 2), {"X": 3})] * 2


def test_off_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("CPU-only check")
    assert launch_mod.fast_path_enabled() is False


@pytest.mark.gpu
def test_gpu_fast_path_matches_tritons_path_and_respecialises():
    """The real kernels: the second call of a shape goes through the cache and gives the same result; an
    input whose pointer is not 16-byte aligned gets its own compiled variant and is still right."""
    from layerzero.kernels.triton.decode_attention import decode_attention
    from layerzero.kernels.triton.rms_norm import rms_norm
    from layerzero.kernels.triton.rope import rope

    assert launch_mod.fast_path_enabled()
    launch_mod.clear()
    x = torch.randn(8, 1, 2304 + 8, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(2304, device="cuda", dtype=torch.bfloat16)
    aligned, misaligned = x[..., :2304], x[..., 1:2305]
    for t in (aligned, aligned, misaligned, misaligned):
        torch.testing.assert_close(rms_norm(t, w, 1e-6, 1.0, "gemma", None).float(),
                                   reference.rms_norm(t, w, eps=1e-6, offset=1.0, casting="gemma").float(), rtol=2e-2, atol=2e-2)
    q, k = (torch.randn(8, h, 1, 256, device="cuda", dtype=torch.bfloat16) for h in (8, 4))
    cos, sin = torch.randn(8, 1, 256, device="cuda"), torch.randn(8, 1, 256, device="cuda")
    want = reference.rope(q, k, cos, sin)
    for _ in range(2):
        for got, exp in zip(rope(q, k, cos, sin, "bhsd", False, 1), want):
            torch.testing.assert_close(got.float(), exp.float(), rtol=2e-2, atol=2e-2)
    for sk in (513, 514, 515):
        qd = torch.randn(8, 1, 8, 256, device="cuda", dtype=torch.bfloat16)
        kd, vd = (torch.randn(8, sk, 4, 256, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        got = decode_attention(qd, kd, vd, None, False, None, 0.0, 4096, 50.0, None, True)
        want = reference.attention(qd, kd, vd, softcap=50.0, sliding_window=4096)
        torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2)
    cached = {kernel.fn.__name__: len(v) for kernel, v in launch_mod._compiled.items()}
    assert cached.get("_rms_norm_rows") == 2, cached  # aligned and misaligned variants
    assert cached.get("_decode_partial") == 1 and cached.get("_rope_kernel") == 1, cached
