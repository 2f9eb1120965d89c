"""benchmarks/parity_matrix.py end to end on CPU: two architectures in fp32 at tiny sizes, every cache case.

The torch kernels are pinned for the norms, RoPE and activations so the run stays fast (the Triton
interpreter would dominate); attention is dispatched as on any CPU."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[2]
PIN = "rope=torch_rope,rms_norm=torch_rms_norm,swiglu=torch_swiglu,geglu=torch_geglu"


def _load():
    spec = importlib.util.spec_from_file_location("bench_parity_matrix", ROOT / "benchmarks" / "parity_matrix.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_parity_matrix_cpu_smoke(tmp_path):
    out = _load().main(["--device", "cpu", "--dtype", "float32", "--archs", "llama,gemma2", "--size", "tiny",
                        "--steps", "3", "--prompt-len", "10", "--kernels", PIN,
                        "--json", str(tmp_path / "p.json"), "--md", str(tmp_path / "p.md")])
    rows = out["rows"]
    assert [(r["arch"], r["cache"]) for r in rows] == [
        (a, c) for a in ("llama", "gemma2") for c in ("dynamic", "static", "padded")]
    for r in rows:
        assert r["verdict"] == "PASS", r
        assert r["max_abs_diff"] <= r["bound"] and r["greedy_match"] == r["greedy_steps"] == 3
    # gemma2's baseline is eager: HF sdpa drops the attention logit softcap
    assert {r["baseline"] for r in rows if r["arch"] == "gemma2"} == {"eager"}
    saved = json.loads((tmp_path / "p.json").read_text())
    assert saved["meta"]["device"] == "cpu" and saved["meta"]["torch"] and len(saved["rows"]) == 6
    assert (tmp_path / "p.md").read_text().startswith("# Parity matrix")


def test_parity_matrix_rejects_unknown_arch():
    with pytest.raises(SystemExit):
        _load().parse_args(["--archs", "llama,nope"])
