import pytest
import torch

from layerzero.errors import KernelNotFoundError, LayerZeroError
from layerzero.registry import (
    BackendRegistry,
    BackendSpec,
    KernelConstraints,
    KernelRegistry,
    KernelSpec,
    get_global_backend_registry,
    get_global_kernel_registry,
)


def _spec(kid, op="rms_norm", **kw):
    return KernelSpec(kid, op, "torch", lambda x, weight=None, eps=1e-6, **_: x, **kw)


def test_get_by_id_and_alias_resolve_to_the_same_spec():
    reg = KernelRegistry([_spec("a_kernel", aliases=("a", "alpha"))])
    assert reg.get("a") is reg.get("a_kernel") is reg.get("alpha")
    assert reg.canonical_id("alpha") == "a_kernel"
    assert "a" in reg and "zzz" not in reg


def test_unknown_kernel_error_suggests_close_names():
    reg = KernelRegistry([_spec("torch_rms_norm")])
    with pytest.raises(KernelNotFoundError) as e:
        reg.get("torch_rms_nrom")
    assert "torch_rms_nrom" in str(e.value) and "did you mean 'torch_rms_norm'" in str(e.value)


def test_duplicate_ids_and_alias_collisions_are_rejected():
    reg = KernelRegistry([_spec("k1", aliases=("one",))])
    with pytest.raises(LayerZeroError, match="already registered"):
        reg.register(_spec("k1"))
    with pytest.raises(LayerZeroError, match="'one' is already used by 'k1'"):
        reg.register(_spec("k2", aliases=("one",)))
    reg.register(_spec("k1", aliases=("uno",)), replace=True)
    assert reg.get("uno").kernel_id == "k1" and "one" not in reg


def test_get_by_operation_orders_by_priority_and_matches_globs():
    reg = KernelRegistry([
        _spec("low", priority=1),
        _spec("high", priority=90),
        KernelSpec("attn", "attention.*", "torch", lambda **_: None),
    ])
    assert [k.kernel_id for k in reg.get_by_operation("rms_norm")] == ["high", "low"]
    assert [k.kernel_id for k in reg.get_by_operation("attention.decode")] == ["attn"]
    gen = reg.generation
    reg.unregister("low")
    assert reg.generation > gen and [k.kernel_id for k in reg.get_by_operation("rms_norm")] == ["high"]


def test_seed_ids_and_yaml_spellings_both_resolve():
    reg = get_global_kernel_registry()
    pairs = {
        "flash_attention_v2": "flash_attn_v2_attention",
        "torch_sdpa": "torch_sdpa_attention",
        "xformers_memory_efficient": "xformers_attention",
        "flashinfer_decode": "flashinfer_decode_attention",
    }
    for alias, canonical in pairs.items():
        assert reg.get(alias) is reg.get(canonical)
    for name in ("liger_rms_norm", "triton_rms_norm", "torch_rms_norm", "triton_rope", "liger_rope", "liger_swiglu",
                 "torch_layer_norm", "flashinfer_decode_attention"):
        assert name in reg


def test_map_arguments_keeps_only_the_contract():
    spec = _spec("k")
    x = torch.ones(2)
    mapped = spec.map_arguments({"x": x, "weight": None}, {"eps": 1e-5, "bookkeeping": 1})
    assert set(mapped) == {"x", "weight", "eps"}


def test_lazy_impl_resolves_on_first_use():
    """A "module:function" kernel imports its module on first use, then ``spec.impl`` is a plain attribute
    (no Python call per dispatch)."""
    spec = KernelSpec("lazy", "swiglu", "torch", "layerzero.kernels.reference:swiglu")
    assert "impl" not in vars(spec)
    g, u = torch.randn(3), torch.randn(3)
    torch.testing.assert_close(spec.impl(gate=g, up=u), torch.nn.functional.silu(g) * u)
    assert vars(spec)["impl"] is spec.impl
    with pytest.raises(RuntimeError, match="no implementation"):
        KernelSpec("empty", "swiglu", "torch").impl


def test_check_reports_backend_and_constraint_reasons():
    backends = BackendRegistry([BackendSpec("ghost", modules=("definitely_not_a_module_xyz",), install_hint="pip install ghost")])
    spec = KernelSpec("ghost_norm", "rms_norm", "ghost", lambda **_: None,
                      KernelConstraints(platforms=frozenset({"cuda"}), dtypes=frozenset({"float16"})))
    from layerzero.selection import SelectionContext

    reasons = spec.check(SelectionContext(operation="rms_norm", dtype="float32", device="cpu"), backends)
    assert any("backend ghost not installed" in r and "definitely_not_a_module_xyz" in r and "pip install ghost" in r for r in reasons)
    assert "device cpu not supported (needs {cuda})" in reasons
    assert "dtype float32 not in {float16}" in reasons


def test_check_hands_the_kernels_backend_status_to_its_constraints():
    from layerzero.registry import needs_backend_status
    from layerzero.selection import SelectionContext

    @needs_backend_status
    def build(ctx, status):
        return f"backend reported {status.available}/{status.reason}"

    backends = BackendRegistry([BackendSpec("plain")])
    spec = KernelSpec("plain_norm", "rms_norm", "plain", lambda **_: None, KernelConstraints(custom=(build,)))
    assert spec.check(SelectionContext(operation="rms_norm"), backends) == ["backend reported True/None"]


def test_backend_probe_is_cached_and_lazy():
    calls = []

    def check():
        calls.append(1)
        return None

    b = BackendSpec("x", modules=("json",), extra_check=check)
    assert calls == []
    assert b.probe().available and b.probe().available
    assert calls == [1]
    b.probe(refresh=True)
    assert calls == [1, 1]


def test_backend_extra_check_reason_is_kept():
    b = BackendSpec("needs_gpu", modules=("json",), extra_check=lambda: "no CUDA device")
    st = b.probe()
    assert not st.available and st.reason == "backend needs_gpu: no CUDA device"


def test_global_backend_registry_knows_every_optional_backend():
    reg = get_global_backend_registry()
    for b in ("torch", "torch_flex", "triton", "flash_attn", "flash_attn_3", "flashinfer", "xformers", "liger"):
        assert b in reg


def test_reference_for_names_the_fp32_oracle():
    reg = get_global_kernel_registry()
    assert reg.reference_for("rms_norm").kernel_id == "reference_rms_norm"
    assert reg.reference_for("attention.decode").kernel_id == "reference_attention"
    assert KernelRegistry([_spec("plain")]).reference_for("rms_norm") is None
