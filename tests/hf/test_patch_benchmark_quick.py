"""The end-to-end benchmark's CPU smoke mode runs and writes its JSON and markdown."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("transformers")


@pytest.mark.slow
def test_hf_llama_benchmark_quick(tmp_path):
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "hf_llama.py"
    spec = importlib.util.spec_from_file_location("hf_llama_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out, md = tmp_path / "r.json", tmp_path / "r.md"
    bench.main(["--quick", "--no-static", "--skip-eager", "--json", str(out), "--md", str(md)])
    result = json.loads(out.read_text())
    lz = result["variants"]["layerzero"]
    assert lz["parity_vs_eager"]["max_abs_diff"] <= 1e-4
    assert lz["patched"] == {"rms_norm": 5, "rope": 2, "mlp": 2}
    assert any(k.endswith("attention") for k in lz["kernels"]) and "torch_rms_norm" in lz["kernels"]
    assert all(v > 0 for v in lz["prefill_tokens_per_s"].values())
    assert lz["decode_ms_per_step"]["dynamic"] > 0
    assert "Prefill tokens/s" in md.read_text()
