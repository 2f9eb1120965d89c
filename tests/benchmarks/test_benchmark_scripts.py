"""The benchmark scripts run end to end in their quick CPU mode (no timing is asserted: a shared CI machine
is far too noisy; the committed GPU results carry the numbers)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_dispatch_overhead_quick(tmp_path, capsys):
    out = _load("dispatch_overhead").main(["--quick", "--json", str(tmp_path / "o.json")])
    res = out["results_ns"]
    for key in ("direct_kernel_ns", "dispatch_ns", "dispatch_lean_ns", "selection_hit_ns", "dispatch_overhead_ns"):
        assert res[key] == res[key] and key in res  # present and not NaN
    assert res["direct_kernel_ns"] > 0 and res["dispatch_ns"] > 0 and res["selection_hit_ns"] > 0
    assert "patched_module_ns" in res  # the patched-module path was measured too
    assert json.loads((tmp_path / "o.json").read_text())["meta"]["kernel"] == out["meta"]["kernel"]
    assert "cached dispatch overhead" in capsys.readouterr().out


def test_attention_choice_quick(tmp_path):
    summary = _load("attention_choice").main(["--quick", "--out", str(tmp_path / "a")])
    assert summary["shapes"] == 3
    data = json.loads((tmp_path / "a.json").read_text())
    for row in data["rows"]:
        assert row["best"] in row["times_us"] and row["chosen_default"]
        assert 0 < row["ratio_default"] <= 1.0
    assert (tmp_path / "a.md").read_text().startswith("# Attention")


@pytest.mark.parametrize("script", ["gpu_run.sh"])
def test_gpu_stage_script_is_valid_bash(script):
    import subprocess

    r = subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.slow
def test_prefill_archs_quick(tmp_path):
    """Every architecture's row is measured for the baseline and the patched model (Liger when installed)."""
    pytest.importorskip("transformers")
    out = _load("prefill_archs").main(["--quick", "--archs", "llama,gpt_oss", "--json", str(tmp_path / "p.json")])
    assert [r["arch"] for r in out["rows"]] == ["llama", "gpt_oss"]
    gpt_oss = out["rows"][1]
    assert gpt_oss["baseline"] == "hf_eager"  # Transformers refuses sdpa with attention sinks
    for row in out["rows"]:
        assert set(row["tokens_per_s"]) >= {"hf_sdpa", "layerzero"}
        assert all(v > 0 for v in row["tokens_per_s"]["layerzero"].values())
        assert any(k.endswith("attention") for k in row["kernels"])
    assert json.loads((tmp_path / "p.json").read_text())["rows"][0]["arch"] == "llama"


@pytest.mark.slow
def test_prefill_archs_alternates_layerzero_and_liger_rounds(tmp_path, monkeypatch):
    """vs Liger comes from alternating rounds on the two live models, re-patched after Liger, not from
    one-pass tables measured minutes apart. A stand-in for Liger's entry point (no-op) keeps this on CPU."""
    import types

    pytest.importorskip("transformers")
    applied = []
    fake = types.ModuleType("liger_kernel.transformers")
    fake._apply_liger_kernel_to_instance = lambda model, **kw: applied.append(kw)
    monkeypatch.setitem(sys.modules, "liger_kernel", types.ModuleType("liger_kernel"))
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", fake)
    out = _load("prefill_archs").main(["--quick", "--archs", "llama", "--json", str(tmp_path / "p.json"),
                                       "--md", str(tmp_path / "p.md")])
    assert applied == [{"cross_entropy": False, "fused_linear_cross_entropy": False}]
    row = out["rows"][0]
    alt = row["vs_liger_alternating"]
    assert alt["same_patch_as_before"] and alt["patched"]["rms_norm"] > 0
    for shape, entry in alt["shapes"].items():
        assert len(entry["round_ratios"]) == 2 and all(r > 0 for r in entry["round_ratios"])
        assert row["layerzero_vs_liger"][shape] == entry["speedup_vs_liger"]
    md = (tmp_path / "p.md").read_text()
    assert "rounds alternating" in md and "(NO)" not in md


@pytest.mark.slow
def test_decode_ab_quick(tmp_path):
    """The alternating decode A/B runs both variants every round on one model and reports per-round ratios."""
    pytest.importorskip("transformers")
    out = _load("decode_ab").main(["--quick", "--arch", "llama-1b", "--rounds", "2", "--profile",
                                   "--json", str(tmp_path / "d.json"), "--md", str(tmp_path / "d.md")])
    assert len(out["rounds"]) == 2
    for r in out["rounds"]:
        assert r["hf_sdpa"] > 0 and r["layerzero"] > 0 and r["layerzero_unsampled"] > 0
        assert any(k.endswith("attention") and calls for k, (calls, _) in r["layerzero_kernels"].items())
    assert out["median_speedup"]["layerzero"] > 0 and out["median_speedup"]["layerzero_unsampled"] > 0
    assert {e["name"] for e in out["profile"]["layerzero"]["top"]} and out["profile"]["hf_sdpa"]["self_cpu_total_ms"] > 0
    assert "sampled checks off" in (tmp_path / "d.md").read_text()
    assert json.loads((tmp_path / "d.json").read_text())["arch"] == "llama-1b"


def test_decode_ab_static_cache_quick(tmp_path):
    """--cache static alternates per-variant patched instances and profiles each variant by kernel kind."""
    pytest.importorskip("transformers")
    out = _load("decode_ab").main(["--quick", "--arch", "llama-1b", "--rounds", "1", "--cache", "static",
                                   "--without-residual-norm", "--profile", "--md", str(tmp_path / "d.md")])
    (r,) = out["rounds"]
    assert r["hf_sdpa"] > 0 and r["layerzero"] > 0 and r["layerzero_no_residual_norm"] > 0
    assert "layerzero_unsampled" not in r and out["decode"]["cache"] == "static"
    assert any(k.endswith("attention") and calls for k, (calls, _) in r["layerzero_kernels"].items())
    assert set(out["profile"]) == {"hf_sdpa", "layerzero", "layerzero_no_residual_norm"}
    assert all(p["total_ms"] > 0 and p["by_kind_ms"] for p in out["profile"].values())
    assert "by kernel kind" in (tmp_path / "d.md").read_text()


@pytest.mark.slow
def test_prefill_profile_quick(tmp_path):
    """Every variant's profile sums time by kernel kind; LayerZero's custom-op ranges are not counted twice."""
    pytest.importorskip("transformers")
    out = _load("prefill_profile").main(["--quick", "--arch", "llama-8b", "--json", str(tmp_path / "p.json"),
                                         "--md", str(tmp_path / "p.md")])
    for name in ("hf_sdpa", "layerzero"):
        for cell in out["variants"][name].values():
            assert cell["wall_ms"] > 0 and cell["launches"] > 0
            assert abs(sum(cell["by_kind_ms"].values()) - cell["total_ms"]) < 1e-6
    assert out["layerzero_kernels"] and "GPU ms by kernel kind" in (tmp_path / "p.md").read_text()
    assert _load("prefill_profile").kernel_kind("nvjet_sm90_tst_256x128") == "gemm"
    assert _load("prefill_profile").kernel_kind("_rms_norm_rows") == "norm"


@pytest.mark.slow
def test_prefill_profile_profiles_a_prefill_archs_architecture(tmp_path):
    """``<arch>-4l`` profiles an architecture as prefill_archs.py measures it (here at the tiny size): the
    architecture's own features are on (Gemma-3: sliding layers, q/k norms)."""
    pytest.importorskip("transformers")
    mod = _load("prefill_profile")
    assert {f"{a}-4l" for a in ("llama", "gemma2", "gemma3_text", "gpt_oss")} <= set(mod.PROFILE_ARCHS)
    cls, cfg = mod.PROFILE_ARCHS["gemma3_text-4l"]
    assert cls == "Gemma3TextConfig" and cfg["num_hidden_layers"] == 4 and cfg["hidden_size"] == 2048
    out = mod.main(["--quick", "--arch", "gemma3_text-4l", "--no-liger", "--json", str(tmp_path / "p.json")])
    assert out["config"]["layer_types"][0] == "sliding_attention"
    assert out["layerzero_kernels"] and out["variants"]["layerzero"]


@pytest.mark.slow
def test_host_cost_quick(tmp_path):
    """Each decode call of the model is listed with every eligible kernel's issue time (GPU time on CUDA)."""
    pytest.importorskip("transformers")
    out = _load("host_cost").main(["--quick", "--arch", "gemma2-2b", "--json", str(tmp_path / "h.json")])
    ops = {c["call"].split(" ")[0] for c in out["calls"]}
    assert {"rms_norm", "rope", "attention.decode"} <= ops
    for c in out["calls"]:
        for t in c["kernels"].values():
            assert "error" in t or (t["issue_us"] > 0 and t["pipelined_us"] > 0)


def test_flashinfer_warmup_compiles_only_the_named_shapes_and_kinds():
    warmup = _load("flashinfer_warmup")
    # Gemma-2 at prefill_archs' width: softcap on/off x window on/off per prefill kind, and one pointwise entry
    cfgs = warmup.configurations(("gemma2-4l",), ("prefill-single", "prefill-batch", "pointwise"))
    assert len(cfgs) == 9 and {c[0] for c in cfgs} == {"prefill-single", "prefill-batch", "pointwise"}
    assert all(c[3] == 128 for c in cfgs)  # head_dim of the 1-2B-class width
    assert {(c[4], c[5]) for c in cfgs if c[0] == "prefill-batch"} == {(None, None), (50.0, None), (None, 4096),
                                                                       (50.0, 4096)}
    only_capped = warmup.configurations(("gemma2-4l",), ("prefill-batch",), model_softcap_only=True)
    assert {(c[4], c[5]) for c in only_capped} == {(50.0, None), (50.0, 4096)}  # Gemma-2's own: softcap always on
    names = [name for name, _ in warmup.jobs(3, ("gemma2-4l",), ("prefill-batch",), conformance=False)]
    assert names == ["configurations:0/3", "configurations:1/3", "configurations:2/3"]
    assert len(warmup.jobs(2, None, None)) == len(warmup.FAMILIES) + 2  # default: conformance jobs too
    with pytest.raises(SystemExit):
        warmup.main(["--kinds", "prefill"])  # a misspelt kind is refused, not silently compiled as nothing


def test_compile_strategies_quick(tmp_path):
    """Every mix compiles the patched model with the strategies it names and matches eager LayerZero."""
    pytest.importorskip("transformers")
    out = _load("compile_strategies").main(["--quick", "--mixes", "inline,opaque:rope+swiglu",
                                            "--json", str(tmp_path / "c.json"), "--md", str(tmp_path / "c.md")])
    mixes = out["shapes"]["1x32"]["mixes"]
    assert mixes["inline"]["strategies"]["rope"] == "inline"
    strategies = mixes["opaque:rope+swiglu"]["strategies"]
    assert (strategies["rope"], strategies["swiglu"], strategies["rms_norm"]) == ("opaque", "opaque", "inline")
    for entry in mixes.values():
        assert entry["max_abs_diff_vs_eager"] < 1e-4 and entry["second_ms"] > 0
    assert "| opaque:rope+swiglu |" in (tmp_path / "c.md").read_text()


def test_kernel_timing_row_records_error_first_call_and_time(monkeypatch):
    """The kernel benchmarks' shared row: the error against the expected output (after ``to_expected``), the
    first call's time, the median; a variant that raises is recorded with its error, not a crash."""
    import torch

    timing = _load("kernel_timing")
    monkeypatch.setattr(timing.torch.cuda, "synchronize", lambda: None)
    monkeypatch.setattr(timing, "median_ms", lambda fn, rep: 0.25 if rep == 150 else None)
    out = torch.tensor([[1.0, 2.0], [3.0, 4.5]])
    row = timing.timed_row({"variant": "v"}, lambda: out, torch.tensor([[1.0, 3.0], [2.0, 4.0]]),
                           lambda o: o.t(), rep=150)
    assert row["max_abs_err"] == 0.5 and row["median_ms"] == 0.25 and row["compile_s"] >= 0
    failed = timing.timed_row({"variant": "w"}, lambda: 1 / 0)
    assert failed["error"].startswith("ZeroDivisionError") and "median_ms" not in failed


def test_prefill_bound_from_a_profile(tmp_path):
    """The bound: peer GPU time over (its GEMM + attention time + the memory floor of the rest); the floor moves
    each layer's norm, RoPE and GLU bytes once at the given peak bandwidth."""
    bench = _load("prefill_bound")
    cfg = {"hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 8, "num_key_value_heads": 2,
           "head_dim": 128, "num_hidden_layers": 2}
    tokens = 2 * 512
    per_layer = (2 * 4 * tokens * 1024 + 2 * tokens * 10 * 128 + 3 * tokens * 4096) * 2
    assert bench.floor_bytes_per_layer(cfg, tokens) == per_layer

    def cell(total, gemm, attention, wall):
        return {"total_ms": total, "wall_ms": wall, "by_kind_ms": {"gemm": gemm, "attention": attention, "norm": 0.5}}

    profile = {"arch": "llama-test", "device": "test GPU", "config": cfg,
               "versions": {"git": "abc1234", "torch": "2", "transformers": "5", "liger_kernel": "0.8"},
               "variants": {"liger": {"2x512": cell(10.0, 7.0, 1.0, 10.5)},
                            "layerzero": {"2x512": cell(9.8, 7.0, 1.0, 10.2)}}}
    path = tmp_path / "p.json"
    path.write_text(json.dumps(profile))
    rows = bench.main([str(path), "--peak-gbs", "1000", "--md", str(tmp_path / "b.md"), "--json", str(tmp_path / "b.json")])
    (row,) = rows
    floor_ms = 2 * per_layer / 1e12 * 1e3
    assert row["floor_ms"] == pytest.approx(floor_ms)
    assert row["max_speedup_vs_peer"] == pytest.approx(10.0 / (8.0 + floor_ms))
    assert row["gpu_speedup_vs_peer"] == pytest.approx(10.0 / 9.8) and row["patched_rest_ms"] == pytest.approx(1.8)
    assert "max speed-up of any patch" in (tmp_path / "b.md").read_text()
    with pytest.raises(SystemExit, match="--peer"):
        bench.main([str(path), "--peer", "flashinfer"])
