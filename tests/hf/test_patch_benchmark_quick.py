"""The end-to-end benchmark's CPU smoke mode runs and writes its JSON and markdown."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("transformers")


def _load_e2e(name: str):
    """A fresh copy of benchmarks/e2e.py as module ``name`` (a test may monkeypatch its globals)."""
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "e2e.py"
    spec = importlib.util.spec_from_file_location(name, path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["llama-1b", "gemma2-2b"])
def test_e2e_benchmark_quick(tmp_path, arch):
    bench = _load_e2e("e2e_bench")
    out, md = tmp_path / "r.json", tmp_path / "r.md"
    bench.main(["--quick", "--arch", arch, "--no-static", "--skip-eager", "--json", str(out), "--md", str(md)])
    result = json.loads(out.read_text())
    lz = result["variants"]["layerzero"]
    assert lz["parity_vs_fp32_eager"]["max_abs_diff"] <= 1e-4
    # Gemma2 layers have four norms; its logit softcap runs exactly (parity with HF eager in fp32)
    assert lz["patched"] == ({"rms_norm": 5, "rope": 2, "mlp": 2, "residual_norm": 2} if arch == "llama-1b"
                             else {"rms_norm": 9, "rope": 2, "mlp": 2})
    assert any(k.endswith("attention") for k in lz["kernels"]) and "torch_rms_norm" in lz["kernels"]
    assert all(v > 0 for v in lz["prefill_tokens_per_s"].values())
    assert lz["decode_ms_per_step"]["dynamic"] > 0
    assert lz["recompile_limit_hits"] == 0
    assert "Prefill tokens/s" in md.read_text()
    assert "decode_ab.py" in md.read_text()  # the one-pass decode column points to the alternating A/B
    assert "flashinfer" in result["versions"]  # whether LayerZero could have picked FlashInfer's kernels


@pytest.mark.slow
def test_e2e_alternates_layerzero_and_liger_prefill_on_two_live_models(tmp_path, monkeypatch):
    """The LayerZero-vs-Liger prefill rounds re-patch the first model after "Liger" is applied and alternate
    the two within each round (Liger stood in by an unpatched model: its kernels need a GPU)."""
    bench = _load_e2e("e2e_bench_alt")
    monkeypatch.setattr(bench, "liger_model", lambda cfg, dtype, device, state, config_class: bench.build_model(
        cfg, dtype, device, "sdpa", state, config_class=config_class))
    out, md = tmp_path / "r.json", tmp_path / "r.md"
    bench.main(["--quick", "--arch", "llama-1b", "--no-static", "--skip-eager", "--without-residual-norm",
                "--liger-rounds", "2", "--json", str(out), "--md", str(md)])
    result = json.loads(out.read_text())
    alt = result["vs_liger_alternating"]
    assert set(alt) == {"rounds", "layerzero", "layerzero_no_residual_norm"}
    for name in ("layerzero", "layerzero_no_residual_norm"):
        assert alt[name]["same_patch_as_before"] is True
        for shape in alt[name]["shapes"].values():
            assert len(shape["round_ratios"]) == 2 and shape["speedup_vs_liger"] > 0
    assert alt["layerzero"]["patched"].get("residual_norm") == 2  # on by default
    assert "residual_norm" not in alt["layerzero_no_residual_norm"]["patched"]
    # and against HF sdpa on a second copy of the weights, before Liger is applied: the default patch only
    vs_sdpa = result["vs_hf_sdpa_alternating"]
    assert set(vs_sdpa) == {"rounds", "layerzero"} and vs_sdpa["layerzero"]["same_patch_as_before"] is True
    for b, s in (tuple(map(int, k.split("x"))) for k in vs_sdpa["layerzero"]["shapes"]):
        shape = vs_sdpa["layerzero"]["shapes"][f"{b}x{s}"]
        assert len(shape["round_ratios"]) == 2 and shape["speedup_vs_hf_sdpa"] > 0 and shape["hf_sdpa_tokens_per_s"] > 0
    text = md.read_text()
    assert "Prefill vs Liger, alternating" in text and "Prefill vs HF sdpa (a second copy of the weights)" in text


@pytest.mark.slow
def test_e2e_prefill_only_skips_decode_and_compile(tmp_path):
    """--prefill-only: prefill tables, logits and the alternating rounds; no decode and no compiled run, and
    the markdown has no decode section."""
    bench = _load_e2e("e2e_bench_prefill_only")
    out, md = tmp_path / "r.json", tmp_path / "r.md"
    bench.main(["--quick", "--arch", "llama-1b", "--prefill-only", "--skip-eager", "--liger-rounds", "0",
                "--compile-shapes", "1x32", "--json", str(out), "--md", str(md)])
    result = json.loads(out.read_text())
    lz = result["variants"]["layerzero"]
    assert lz["decode_ms_per_step"] == {} and not result["compiled"]
    assert all(v > 0 for v in lz["prefill_tokens_per_s"].values())
    assert lz["parity_vs_fp32_eager"]["max_abs_diff"] <= 1e-4
    assert result["vs_hf_sdpa_alternating"]["layerzero"]["shapes"]
    text = md.read_text()
    assert "Decode ms/step" not in text and "Prefill vs HF sdpa" in text


@pytest.mark.slow
def test_e2e_compiled_prefill_both_strategies_with_and_without_cache(tmp_path):
    """--compile-shapes measures compiled HF sdpa and LayerZero under the default and the other compile
    strategy (Inductor on CPU), and --compile-with-cache adds the prefill into a fresh cache."""
    bench = _load_e2e("e2e_bench_compiled")
    out, md = tmp_path / "r.json", tmp_path / "r.md"
    bench.main(["--quick", "--arch", "llama-1b", "--no-static", "--skip-eager", "--liger-rounds", "0",
                "--compile-shapes", "1x32", "--compile-with-cache", "--json", str(out), "--md", str(md)])
    result = json.loads(out.read_text())
    from layerzero.ops.compile_strategy import DEFAULT_STRATEGY

    assert result["compile_strategy"] == DEFAULT_STRATEGY == "inline"
    assert set(result["compiled"]) == {"hf_sdpa", "layerzero", "layerzero_opaque"}
    for entry in result["compiled"].values():
        assert set(entry["prefill_tokens_per_s"]) == set(entry["prefill_with_cache_tokens_per_s"]) == {"1x64"}
        assert all(v > 0 for v in entry["prefill_with_cache_tokens_per_s"].values())
        assert entry["parity_vs_fp32_eager"]["max_abs_diff"] <= 1e-4
    assert result["other_compile_strategy"]["strategy"] == "opaque"
    assert "Compiled prefill into a fresh cache" in md.read_text()


@pytest.mark.slow
def test_e2e_stopped_by_sigterm_writes_the_variants_it_finished(tmp_path, monkeypatch):
    """``timeout`` stops a GPU run with SIGTERM: the variants measured by then are written, marked partial,
    with their ratios to HF sdpa, instead of being lost with the process."""
    import os
    import signal

    bench = _load_e2e("e2e_bench_partial")
    real_liger_model = bench.liger_model

    def stop_at_liger(*args, **kwargs):  # SIGTERM arrives once HF sdpa and LayerZero are done
        os.kill(os.getpid(), signal.SIGTERM)
        return real_liger_model(*args, **kwargs)

    monkeypatch.setattr(bench, "liger_model", stop_at_liger)
    out, md = tmp_path / "r.json", tmp_path / "r.md"
    before = signal.getsignal(signal.SIGTERM)
    bench.main(["--quick", "--arch", "llama-1b", "--no-static", "--skip-eager", "--liger-rounds", "0",
                "--json", str(out), "--md", str(md)])
    assert signal.getsignal(signal.SIGTERM) is before  # restored
    result = json.loads(out.read_text())
    assert "stopped by SIGTERM" in result["partial"]
    assert set(result["variants"]) == {"hf_sdpa", "layerzero"}
    assert result["variants"]["layerzero"]["prefill_speedup_vs_sdpa"]
    text = md.read_text()
    assert "Partial run" in text and "| layerzero |" in text
