"""layerzero_hf.compare: kernels compared on the calls a real (tiny) model makes, and the policy A/B."""

from __future__ import annotations

import math
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")

import layerzero_hf  # noqa: E402
from layerzero.tuning.kernel_compare import COLUMNS  # noqa: E402
from single_thread import one_intra_op_thread  # noqa: E402
from layerzero_hf.compare import ComparisonList, compare, compare_policies, plot_comparison  # noqa: E402

MODEL_OPS = {"rms_norm", "rope", "attention.prefill", "swiglu"}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_intra_op_thread():
        yield


@pytest.fixture(scope="module")
def tiny_llama(_one_thread):
    cfg = transformers.LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=64, pad_token_id=0, bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def model_results(tiny_llama):
    return compare(tiny_llama, repeats=2, warmup=1, seq_len=8, progress=False)


def test_compare_model_has_every_column_and_op(model_results, tiny_llama):
    df = model_results
    assert list(df.columns) == list(COLUMNS)
    assert set(df["operation"]) == MODEL_OPS
    # one row per kernel: at least torch + reference for every op on CPU
    counts = df.groupby("operation")["kernel_id"].nunique()
    assert (counts >= 2).all(), counts.to_dict()
    # our Triton kernels take part wherever they can run (on CPU through TRITON_INTERPRET=1, see conftest)
    from layerzero.registry import get_global_backend_registry

    if get_global_backend_registry().is_available("triton"):
        for op in ("rms_norm", "rope", "swiglu"):
            assert f"triton_{op}" in set(df.loc[df.operation == op, "kernel_id"])
    # exactly one chosen kernel per call shape, and it is what the model's policy runs
    chosen = df[df["chosen"]].groupby(["operation", "shape"]).size()
    assert (chosen == 1).all()
    # the calls column counts how often a shape occurs in one forward: 2 input norms + the final norm, and
    # the 2 post-attention norms that take the attention's residual add (the residual_norm kind)
    norms = df[df.operation == "rms_norm"]
    assert set(norms.loc[~norms["shape"].str.contains("residual"), "calls"]) == {3}
    assert set(norms.loc[norms["shape"].str.contains("residual"), "calls"]) == {2}
    assert set(df.loc[df.operation == "swiglu", "calls"]) == {2}
    # the model is left exactly as it was: not patched, attention back to its implementation
    assert not layerzero_hf.is_patched(tiny_llama)
    assert tiny_llama.config._attn_implementation != "layerzero"


def test_compare_model_numbers_are_sane(model_results):
    df = model_results
    assert df["ok"].all(), df.loc[~df["ok"], ["kernel_id", "error"]].to_dict("records")
    assert (df["max_error"] < 1e-4).all()  # fp32 on CPU vs the fp32 reference
    assert (df["median_us"] > 0).all()
    assert (df["p10_us"] <= df["median_us"]).all() and (df["median_us"] <= df["p90_us"]).all()
    ref = df[df.kernel_id.str.startswith("reference_")]
    assert ((ref["speedup_vs_reference"] - 1.0).abs() < 1e-9).all()
    base = df[df.kernel_id.isin(["torch_rms_norm", "torch_rope", "torch_swiglu", "torch_sdpa_attention"])]
    assert ((base["speedup_vs_torch"] - 1.0).abs() < 1e-9).all()
    # shapes are the real ones: q (1, 8 tokens, 4 heads, 16) over 2 kv heads
    attn_shape = df.loc[df.operation == "attention.prefill", "shape"].iloc[0]
    assert "q 1x8x4x16" in attn_shape and "kv 1x8x2x16" in attn_shape and "causal" in attn_shape


def test_compare_model_ops_filter_kernels_and_dtype(tiny_llama):
    df = compare(tiny_llama, ops="rms_norm", kernels=["torch_rms_norm", "reference_rms_norm", "liger_rms_norm"],
                 dtype=torch.bfloat16, repeats=2, warmup=0, seq_len=8, progress=False)
    assert set(df.operation) == {"rms_norm"}
    rows = {r["kernel_id"]: r for r in df.to_dict("records")}
    assert set(rows) == {"torch_rms_norm", "reference_rms_norm", "liger_rms_norm"}
    assert "bfloat16" in rows["torch_rms_norm"]["shape"]
    # bf16 output vs the fp32 reference: a visible but in-tolerance error
    assert 0 < rows["torch_rms_norm"]["max_error"] < 0.1 and rows["torch_rms_norm"]["ok"]
    # a kernel that cannot run here is reported with the reason, not run
    liger = rows["liger_rms_norm"]
    assert not liger["ok"] and math.isnan(liger["median_us"])
    assert liger["error"].startswith("cannot run:") and "liger" in liger["error"]


def test_compare_shapes_and_explicit_calls():
    gate, up = torch.randn(4, 32), torch.randn(4, 32)
    df = compare(
        [{"operation": "rms_norm", "tokens": 8, "hidden": 64}, ("swiglu", {"gate": gate, "up": up})],
        shapes=[{"operation": "attention.causal", "batch": 1, "seq": 8, "heads": 2, "head_dim": 16}],
        repeats=2, warmup=0, device="cpu", progress=False,
    )
    assert set(df.operation) == {"rms_norm", "swiglu", "attention.causal"}
    assert df["ok"].all()
    assert "float32" in df.loc[df.operation == "rms_norm", "shape"].iloc[0]
    assert df.loc[df.operation == "swiglu", "shape"].iloc[0].startswith("gate 4x32")


def test_compare_bad_shape_names_field_and_value():
    from layerzero.errors import ConfigValidationError

    with pytest.raises(ConfigValidationError) as info:
        compare(shapes=[{"operation": "rms_norm", "tokns": 8}], progress=False)
    problem = info.value.problems[0]
    assert problem.field == "shapes[0].tokns" and problem.value == 8


def test_plot_draws_a_panel_per_call_shape(model_results):
    import matplotlib

    matplotlib.use("Agg")
    fig = model_results.layerzero.plot()
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == model_results.groupby(["operation", "shape"]).ngroups
    labels = {t.get_text().removesuffix(" (noisy)") for ax in visible for t in ax.get_yticklabels()}
    assert "torch_rms_norm" in labels and "reference_attention" in labels
    # the result is a plain DataFrame: pandas' own plot works unchanged
    assert type(model_results).__name__ == "DataFrame" and callable(model_results.plot.bar)


def test_without_pandas_returns_list_with_plot(monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)
    rows = compare(shapes=[{"operation": "swiglu", "tokens": 4, "hidden": 16}], repeats=1, warmup=0,
                   device="cpu", progress=False)
    assert isinstance(rows, ComparisonList) and isinstance(rows[0], dict)
    assert set(rows[0]) == set(COLUMNS)
    fig = plot_comparison(rows)
    assert fig.axes


def test_compare_policies_kernel_map(tiny_llama):
    ids = torch.randint(3, 128, (1, 8))
    result = compare_policies(
        tiny_llama, ids, None, {"rms_norm": "reference_rms_norm", "attention.*": "torch_sdpa_math_attention"},
        repeats=2, warmup=0, progress=False,
    )
    assert result.a.kernels["rms_norm"] == {"torch_rms_norm": 5}
    assert result.b.kernels["rms_norm"] == {"reference_rms_norm": 5}
    assert set(result.b.kernels["attention.prefill"]) == {"torch_sdpa_math_attention"}
    assert result.max_abs_diff < 1e-4
    assert result.a.median_us > 0 and result.b.median_us > 0 and result.speedup > 0
    assert "reference_rms_norm x5" in str(result)
    assert not layerzero_hf.is_patched(tiny_llama)
    # the outputs are the model's logits
    with torch.no_grad():
        plain = tiny_llama(ids).logits
    assert torch.allclose(result.a.output.logits, plain, atol=1e-5)


def test_compare_keeps_an_existing_patch_and_warns_about_attention(tiny_llama):
    report = layerzero_hf.patch(tiny_llama)  # norms, RoPE, MLP; attention stays on Transformers' implementation
    try:
        with pytest.warns(UserWarning, match="attention is not compared") as record:
            df = compare(tiny_llama, repeats=1, warmup=0, seq_len=8, progress=False)
        assert record[0].filename == __file__  # the warning points at the caller
        assert set(df.operation) == {"rms_norm", "rope", "swiglu"}
        assert layerzero_hf.is_patched(tiny_llama) and layerzero_hf.patch_report(tiny_llama) is report
    finally:
        layerzero_hf.unpatch(tiny_llama)


@pytest.mark.gpu
def test_compare_on_cuda_bf16(tiny_llama):
    import copy

    model = copy.deepcopy(tiny_llama).to("cuda", torch.bfloat16)
    df = compare(model, repeats=3, warmup=1, seq_len=64, progress=False)
    assert set(df.operation) == MODEL_OPS
    assert df["ok"].all(), df.loc[~df["ok"], ["kernel_id", "error"]].to_dict("records")
    assert (df["max_error"] < 0.1).all() and (df["median_us"] > 0).all()
    assert "bfloat16" in df["shape"].iloc[0]
    # GPU-only kernels take part: SDPA pinned to cuDNN/flash on sm80+, our Triton kernels
    ids = set(df["kernel_id"])
    assert {"triton_rms_norm", "triton_rope", "triton_swiglu"} <= ids
    if torch.cuda.get_device_capability() >= (8, 0):
        assert "torch_sdpa_flash_attention" in ids
