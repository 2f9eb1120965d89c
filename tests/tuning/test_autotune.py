import json

import pytest
import torch

from layerzero.dispatch import DispatchConfig, DispatchMode, create_orchestrator
from layerzero.dispatch.autotune import AutotuneDispatcher
from layerzero.registry import KernelRegistry, KernelSpec
from layerzero.tuning import TuningCache
from layerzero.tuning.sweep import TuneShape, tune


def _slow_norm(x, weight=None, eps=1e-6, offset=0.0, casting="llama", residual=None):
    import time

    time.sleep(0.002)
    from layerzero.kernels.reference import rms_norm

    return rms_norm(x=x, weight=weight, eps=eps)


def _wrong_norm(x, weight=None, eps=1e-6, offset=0.0, casting="llama", residual=None):
    return x * 0 + 1  # fast and wrong: must never be chosen


def _registry():
    return KernelRegistry([
        KernelSpec("reference_rms_norm", "rms_norm", "torch", "layerzero.kernels.reference:rms_norm", priority=0, tags={"reference"}),
        KernelSpec("slow_norm", "rms_norm", "torch", _slow_norm, priority=90),
        KernelSpec("wrong_norm", "rms_norm", "torch", _wrong_norm, priority=80),
        KernelSpec("torch_rms_norm", "rms_norm", "torch", "layerzero.kernels.torch_ops:torch_rms_norm", priority=50),
    ])


def _dispatcher(path, versions=None, registry=None):
    cfg = DispatchConfig(mode=DispatchMode.AUTOTUNE, autotune_cache_path=str(path), autotune_warmup=1, autotune_repeats=3)
    return AutotuneDispatcher(cfg, kernel_registry=registry or _registry(),
                              tuning_cache=TuningCache(path, versions=versions or {"torch": "1.0"}))


def test_autotune_picks_the_fastest_conforming_kernel_and_persists(tmp_path):
    path = tmp_path / "tune.json"
    d = _dispatcher(path)
    x, w = torch.randn(4, 32), torch.randn(32)
    r = d.dispatch("rms_norm", {"x": x, "weight": w})
    assert r.kernel_id in ("torch_rms_norm", "reference_rms_norm")  # slow_norm is slower, wrong_norm is wrong
    entry = next(iter(d.tuning.entries().values()))
    assert "wrong_norm" in entry.rejected and "max error" in entry.rejected["wrong_norm"]
    assert set(entry.times_us) >= {"slow_norm", "torch_rms_norm"}
    data = json.loads(path.read_text())
    assert data["fingerprint"] == json.dumps({"torch": "1.0"}) and len(data["entries"]) == 1
    # a new dispatcher reads the choice back without measuring
    d2 = _dispatcher(path)
    d2.measure = lambda *a, **k: pytest.fail("should not re-measure a cached bucket")
    assert d2.dispatch("rms_norm", {"x": x, "weight": w}).kernel_id == r.kernel_id


def test_version_change_invalidates(tmp_path):
    path = tmp_path / "tune.json"
    _dispatcher(path).dispatch("rms_norm", {"x": torch.randn(4, 32), "weight": torch.randn(32)})
    cache = TuningCache(path, versions={"torch": "2.0"})
    assert len(cache) == 0 and cache.invalidated == 1


def test_no_tuning_while_compiling(tmp_path, monkeypatch):
    d = _dispatcher(tmp_path / "t.json")
    monkeypatch.setattr("layerzero.dispatch.autotune.unsafe_to_time", lambda: "inside torch.compile tracing")
    r = d.dispatch("rms_norm", {"x": torch.randn(2, 8), "weight": torch.randn(8)})
    assert r.kernel_id == "slow_norm"  # policy ranking, untimed
    assert len(d.tuning) == 0 and d.engine.cache_len == 0


def test_orchestrator_autotune_mode_and_sweep(tmp_path):
    o = create_orchestrator(DispatchConfig(mode=DispatchMode.AUTOTUNE, autotune_cache_path=str(tmp_path / "o.json")))
    x = torch.randn(3, 16)
    r = o.dispatch("rms_norm", {"x": x, "weight": torch.ones(16)})
    assert r.output.shape == x.shape
    out = tune([TuneShape("rms_norm", dtype="float32", tokens=8, hidden=64),
                TuneShape("attention.prefill", dtype="float32", seq_q=16, heads=2, head_dim=16)],
               device="cpu", cache_path=str(tmp_path / "sweep.json"), progress=False)
    assert out["entries"] == 2 and len(out["chosen"]) == 2
