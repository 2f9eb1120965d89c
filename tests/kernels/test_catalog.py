"""The catalogue: ids, aliases, backends, priorities and the reasons constraints give on this CPU machine."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from layerzero.kernels.catalog import builtin_backends, builtin_kernels
from layerzero.registry import BackendRegistry, KernelRegistry
from layerzero.context.call_context import SelectionContext

ARCH_IDS = {
    "torch_sdpa_attention", "torch_sdpa_flash_attention", "torch_sdpa_efficient_attention",
    "torch_sdpa_cudnn_attention", "torch_sdpa_math_attention", "torch_flex_attention", "reference_attention",
    "flash_attn_v2_attention", "flash_attn_v3_attention", "flashinfer_prefill_attention",
    "flashinfer_decode_attention", "xformers_attention", "torch_rms_norm", "reference_rms_norm",
    "liger_rms_norm", "flashinfer_rms_norm", "torch_layer_norm", "reference_layer_norm", "liger_layer_norm",
    "torch_rope", "reference_rope", "liger_rope", "flashinfer_rope", "torch_swiglu", "reference_swiglu",
    "liger_swiglu", "flashinfer_swiglu", "torch_geglu", "reference_geglu", "liger_geglu",
}
ALIASES = {
    "torch_sdpa": "torch_sdpa_attention",
    "flash_attention_v2": "flash_attn_v2_attention",
    "flash_attention_v3": "flash_attn_v3_attention",
    "flashinfer_decode": "flashinfer_decode_attention",
    "xformers_memory_efficient": "xformers_attention",
}


@pytest.fixture(scope="module")
def registries():
    backends = BackendRegistry(builtin_backends())
    return KernelRegistry(builtin_kernels()), backends


def _ctx(**kw) -> SelectionContext:
    base = dict(operation="attention.prefill", batch_size=1, seq_len=128, num_heads=8, num_kv_heads=8,
                head_dim=128, dtype="bfloat16", device="cpu", is_causal=True)
    base.update(kw)
    return SelectionContext(**base)


def test_every_documented_kernel_id_and_alias_resolves(registries):
    reg, _ = registries
    missing = ARCH_IDS - set(reg.ids())
    assert not missing, f"catalogue lacks {sorted(missing)}"
    for alias, kid in ALIASES.items():
        assert reg.canonical_id(alias) == kid


def test_backend_ids():
    ids = {b.backend_id for b in builtin_backends()}
    assert ids == {"torch", "torch_flex", "triton", "flash_attn", "flash_attn_3", "flashinfer", "xformers", "liger"}


def test_every_kernel_names_a_known_backend_and_its_function(registries):
    """Kernels name their function; only the Triton kernels, whose modules import triton, keep a
    ``module:function`` path resolved on first call. The fp32 references are the operations' own
    (``layerzero.operations``), registered as last-resort kernels."""
    reg, backends = registries
    for spec in reg:
        assert spec.backend in backends, spec.kernel_id
        if spec.backend == "triton":
            assert spec.impl_path and ":" in spec.impl_path, spec.kernel_id
        else:
            assert spec.impl_path is None and callable(spec.impl), spec.kernel_id
            home = "layerzero.operations." if spec.is_reference else "layerzero.kernels."
            assert spec.impl.__module__.startswith(home), spec.kernel_id


def test_references_are_last_resort(registries):
    reg, _ = registries
    refs = [k for k in reg if k.is_reference]
    assert {k.kernel_id for k in refs} >= {f"reference_{op}" for op in
                                           ("attention", "rms_norm", "layer_norm", "rope", "swiglu", "geglu")}
    for k in refs:
        assert k.priority == 0 and k.backend == "torch"
        assert not k.constraints.check(_ctx(dtype="float64"))
    attn = reg.get("reference_attention").constraints
    assert not attn.check(_ctx(dtype="float64", softcap=30.0, sliding_window=8, has_sinks=True, attn_mask="additive"))


def test_priorities_follow_measurements(registries):
    """H100 measurements (our sweeps): SDPA default (picks cuDNN) >= pinned cuDNN > FA2 /
    FlashInfer > Flex > mem-efficient > math > reference; Liger RoPE > eager RoPE; SDPA beats FlashInfer decode."""
    reg, _ = registries
    p = {k.kernel_id: k.priority for k in reg}
    assert p["torch_sdpa_cudnn_attention"] > p["flash_attn_v2_attention"] >= p["flashinfer_prefill_attention"]
    assert p["flash_attn_v2_attention"] > p["torch_flex_attention"] > p["torch_sdpa_efficient_attention"]
    assert p["torch_sdpa_efficient_attention"] > p["torch_sdpa_math_attention"] > p["reference_attention"] == 0
    assert p["torch_sdpa_attention"] > p["torch_sdpa_cudnn_attention"] > p["flash_attn_v3_attention"]
    assert p["torch_sdpa_attention"] > p["flashinfer_decode_attention"]
    assert p["liger_rope"] > p["torch_rope"]


def test_import_does_not_load_optional_backends():
    code = (
        "import sys, layerzero.kernels, layerzero.kernels.catalog as c; c.builtin_kernels(); c.builtin_backends();"
        "from layerzero.registry import get_global_kernel_registry; get_global_kernel_registry();"
        "bad=[m for m in ('triton','flash_attn','flash_attn_interface','flashinfer','xformers','liger_kernel')"
        " if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_missing_backend_reason_names_the_module(registries):
    reg, backends = registries
    reasons = reg.get("flash_attn_v2_attention").check(_ctx(), backends)
    if "flash_attn" in sys.modules or not reasons:
        pytest.skip("flash_attn importable here")
    assert reasons[0].startswith("backend flash_attn not installed: No module named 'flash_attn'")
    assert "pip install flash-attn" in reasons[0]


def test_cpu_device_rejected_by_cuda_kernels(registries):
    reg, _ = registries
    for kid in ("torch_sdpa_cudnn_attention", "torch_sdpa_flash_attention", "torch_sdpa_efficient_attention",
                "flash_attn_v2_attention", "xformers_attention", "liger_rms_norm"):
        reasons = reg.get(kid).constraints.check(_ctx())
        assert "device cpu not supported (needs {cuda})" in reasons, (kid, reasons)


@pytest.mark.parametrize(
    "kernel_id, ctx_changes, expected",
    [
        ("torch_sdpa_cudnn_attention", dict(head_dim=256), "head_dim 256 > 128"),
        ("torch_sdpa_cudnn_attention", dict(head_dim=100), "head_dim 100 not a multiple of 8"),
        ("torch_sdpa_cudnn_attention", dict(seq_len_q=1, seq_len_k=1), "seq_len_k 1 not supported"),
        ("torch_sdpa_cudnn_attention", dict(dropout_p=0.1), "dropout_p 0.1 not a multiple of 1/16"),
        ("torch_sdpa_cudnn_attention", dict(compute_capability=(7, 5)), "compute capability 7.5 < 8.0"),
        ("torch_sdpa_cudnn_attention", dict(softcap=30.0), "softcap 30.0 not supported"),
        ("torch_sdpa_flash_attention", dict(head_dim=320), "head_dim 320 > 256"),
        ("torch_sdpa_flash_attention", dict(attn_mask="bool"), "boolean attention mask not supported"),
        ("torch_sdpa_flash_attention", dict(seq_len_q=16, seq_len_k=64),
         "bottom-right causal with seq_len_q 16 != seq_len_k 64 not supported"),
        ("torch_sdpa_flash_attention", dict(dtype="float32"), "dtype float32 not in {bfloat16, float16}"),
        ("torch_sdpa_efficient_attention", dict(num_kv_heads=2), "grouped-query attention (8 query / 2 kv heads) not supported"),
        ("torch_sdpa_efficient_attention", dict(head_dim=100), "head_dim 100 not a multiple of 8"),
        ("torch_sdpa_attention", dict(softcap=50.0), "softcap 50.0 not supported"),
        ("torch_sdpa_attention", dict(has_sinks=True), "attention sinks (s_aux) not supported"),
        ("torch_flex_attention", dict(dropout_p=0.1), "dropout_p 0.1 not supported"),
        ("flash_attn_v2_attention", dict(attn_mask="additive"), "additive (float) attention mask not supported"),
        ("flash_attn_v2_attention", dict(head_dim=128, head_dim_v=64), "value head_dim 64 != query head_dim 128 not supported"),
        ("flash_attn_v3_attention", dict(compute_capability=(8, 0)), "compute capability 8.0 < 9.0"),
        ("flash_attn_v3_attention", dict(dropout_p=0.1), "dropout_p 0.1 not supported"),
        ("flashinfer_decode_attention", dict(seq_len_q=4, seq_len_k=64), "seq_len_q 4 != 1"),
        ("flashinfer_prefill_attention", dict(head_dim=80), "head_dim 80 not in {128, 256, 64}"),
        ("flashinfer_rms_norm", dict(operation="rms_norm", casting="llama"), "casting mode llama not supported"),
        ("flashinfer_rms_norm", dict(operation="rms_norm", norm_offset=0.5), "norm weight offset 0.5 not supported"),
        ("xformers_attention", dict(softcap=30.0), "softcap 30.0 not supported"),
        ("torch_eager_attention", dict(seq_len_q=17, seq_len_k=64), "seq_len_q 17 > 16 on CUDA"),
        ("torch_eager_attention", dict(dropout_p=0.1), "dropout_p 0.1 not supported"),
        ("liger_rope", dict(operation="rope", interleaved=True), "interleaved rotary not supported"),
    ],
)
def test_constraint_reasons(registries, kernel_id, ctx_changes, expected):
    reg, _ = registries
    ctx = _ctx(**ctx_changes)
    if "compute_capability" not in ctx_changes:
        ctx = ctx.replace(device="cuda:0", platform="cuda", compute_capability=(9, 0))
    else:
        ctx = ctx.replace(device="cuda:0", platform="cuda")
    reasons = reg.get(kernel_id).constraints.check(ctx)
    assert any(expected in r for r in reasons), (kernel_id, reasons)


@pytest.mark.parametrize(
    "kernel_id, ctx_changes",
    [
        ("torch_sdpa_cudnn_attention", dict(num_kv_heads=2, seq_len_q=1, seq_len_k=512)),
        ("torch_sdpa_flash_attention", dict(num_kv_heads=2, sliding_window=None)),
        ("flash_attn_v2_attention", dict(num_kv_heads=2, softcap=30.0, sliding_window=256, seq_len_q=16, seq_len_k=64)),
        ("flashinfer_decode_attention", dict(num_kv_heads=2, seq_len_q=1, seq_len_k=4096)),
        ("torch_flex_attention", dict(softcap=30.0, has_sinks=True, sliding_window=64, attn_mask="bool")),
        ("torch_eager_attention", dict(num_kv_heads=2, softcap=50.0, has_sinks=True, sliding_window=64,
                                       attn_mask="bool", seq_len_q=1, seq_len_k=4096)),
    ],
)
def test_supported_calls_pass_constraints(registries, kernel_id, ctx_changes):
    reg, _ = registries
    ctx = _ctx(**ctx_changes).replace(device="cuda:0", platform="cuda", compute_capability=(9, 0))
    assert reg.get(kernel_id).constraints.check(ctx) == []


def test_triton_backend_follows_interpreter_flag(monkeypatch):
    import layerzero.kernels.catalog as catalog

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert catalog._triton_check() is None
    monkeypatch.delenv("TRITON_INTERPRET")
    if not torch.cuda.is_available():
        reason = catalog._triton_check()
        assert reason and "TRITON_INTERPRET=1" in reason


def test_flashinfer_rope_refuses_head_dims_its_fast_kernel_does_not_cover():
    """FlashInfer routes head dims other than 64/128/256/512 to a kernel that was wrong in a model (head_dim 16
    on an H200): the constraint must rule such calls out."""
    from layerzero.registry import get_global_kernel_registry
    from layerzero.selection import SelectionContext

    spec = get_global_kernel_registry().get("flashinfer_rope")
    base = dict(operation="rope", dtype="bfloat16", device="cuda:0", compute_capability=(9, 0), num_heads=4,
                num_kv_heads=2, batch_size=1, seq_len=8)
    assert any("head_dim 16" in r for r in spec.constraints.check(SelectionContext(head_dim=16, rotary_dim=16, **base)))
    assert not spec.constraints.check(SelectionContext(head_dim=128, rotary_dim=128, **base))
    assert not spec.constraints.check(SelectionContext(head_dim=128, rotary_dim=64, **base))


def test_liger_rope_is_ruled_out_where_a_recorded_model_call_failed():
    """The in-context replay on an H200 found liger_rope wrong on a left-padded decode step (batch 2, one
    token); such calls must not be eligible, single-sequence decode and prefill stay eligible."""
    from layerzero.registry import get_global_kernel_registry
    from layerzero.selection import SelectionContext

    spec = get_global_kernel_registry().get("liger_rope")
    base = dict(operation="rope", dtype="bfloat16", device="cuda:0", compute_capability=(9, 0), num_heads=4,
                num_kv_heads=2, head_dim=64, rotary_dim=64)
    assert spec.constraints.check(SelectionContext(batch_size=2, seq_len=1, **base))
    assert not spec.constraints.check(SelectionContext(batch_size=1, seq_len=1, **base))
    assert not spec.constraints.check(SelectionContext(batch_size=2, seq_len=12, **base))


def test_liger_partial_rotary_reads_the_liger_version_it_is_handed():
    """The version limit judges the Liger build in the backends the caller checks against, not a global."""
    from layerzero.registry import BackendStatus

    spec = {k.kernel_id: k for k in builtin_kernels()}["liger_rope"]
    partial = SelectionContext(operation="rope", dtype="bfloat16", device="cuda:0", compute_capability=(9, 0),
                               num_heads=4, num_kv_heads=2, head_dim=64, rotary_dim=32, batch_size=1, seq_len=8)
    old = spec.constraints.check(partial, BackendStatus(True, "0.8.4"))
    assert old == ["partial rotary needs liger-kernel >= 0.8.5 (installed 0.8.4)"]
    assert spec.constraints.check(partial, BackendStatus(True, "0.8.5")) == []
    assert spec.constraints.check(partial.replace(rotary_dim=64), BackendStatus(True, "0.8.4")) == []
