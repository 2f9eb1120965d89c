"""CPU smoke test of benchmarks/kernel_sweep.py --quick (what CI runs)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _load():
    spec = importlib.util.spec_from_file_location("kernel_sweep", ROOT / "benchmarks" / "kernel_sweep.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["kernel_sweep"] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_quick_sweep_writes_json_and_markdown(tmp_path):
    sweep = _load()
    out = tmp_path / "run"
    assert sweep.main(["--quick", "--device", "cpu", "--ops", "rms_norm,rope,swiglu", "--out", str(out), "--quiet"]) == 0
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["versions"]["torch"] and data["device"] and data["quick"] is True
    ok = [r for r in data["rows"] if r["status"] == "ok"]
    assert {r["kernel_id"] for r in ok} >= {"torch_rms_norm", "reference_rms_norm", "torch_rope", "torch_swiglu"}
    assert all(r["median_ms"] > 0 and r["unit"] == "GB/s" and r["max_abs_err"] < 1e-4 for r in ok)
    assert not [r for r in data["rows"] if r["status"] == "error"]
    md = out.with_suffix(".md").read_text()
    assert "## rms_norm" in md and "torch_rms_norm" in md
