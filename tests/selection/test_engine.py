import pytest
import torch

from layerzero.errors import NoKernelAvailableError
from layerzero.policy import PolicyEngine, load_policy
from layerzero.registry import (
    BackendRegistry,
    BackendSpec,
    KernelConstraints,
    KernelRegistry,
    KernelSpec,
    get_global_backend_registry,
    get_global_kernel_registry,
)
from layerzero.selection import SelectionContext, SelectionEngine
from layerzero.context.buckets import Bucketer
from layerzero.context.keys import make_keyer


def norm(kid, priority=50, **constraints):
    return KernelSpec(kid, "rms_norm", "torch", "layerzero.kernels.reference:rms_norm",
                      KernelConstraints(**constraints), priority)


@pytest.fixture
def backends():
    return BackendRegistry([BackendSpec("torch", modules=("torch",))])


def test_highest_priority_runnable_kernel_wins(backends):
    reg = KernelRegistry([norm("gpu_only", 90, platforms=frozenset({"cuda"})), norm("fast", 60), norm("slow", 10)])
    eng = SelectionEngine(reg, backends)
    ctx = SelectionContext(operation="rms_norm", device="cpu", dtype="float32", hidden_size=8)
    assert eng.select("rms_norm", ctx).kernel_id == "fast"
    plan = eng.plan("rms_norm", ctx)
    assert [k.kernel_id for k in plan.kernels] == ["fast", "slow"]


def test_explain_on_cpu_lists_gpu_kernels_rejected_with_real_reasons():
    eng = SelectionEngine(get_global_kernel_registry(), get_global_backend_registry())
    ctx = SelectionContext(operation="attention.causal", batch_size=1, seq_len=128, num_heads=8, head_dim=64,
                           dtype="float16", device="cpu", is_causal=True)
    ex = eng.explain("attention.causal", ctx)
    assert ex.chosen is not None and ex[ex.chosen].status == "chosen"
    rejected = ex.rejected()
    assert any("backend flash_attn not installed" in r for r in rejected["flash_attn_v2_attention"])
    assert any("backend flashinfer not installed" in r for r in rejected["flashinfer_prefill_attention"])
    assert any("device cpu not supported" in r for r in rejected["torch_sdpa_cudnn_attention"])
    assert any("device cpu not supported" in r for r in rejected["torch_sdpa_flash_attention"])
    text = str(ex)
    assert "chosen" in text and "flash_attn_v2_attention" in text
    assert ex.as_dict()["chosen"] == ex.chosen


def test_no_kernel_error_lists_every_candidate_and_reason(backends):
    reg = KernelRegistry([norm("gpu_a", platforms=frozenset({"cuda"})), norm("half_b", dtypes=frozenset({"float16"}))])
    eng = SelectionEngine(reg, backends)
    with pytest.raises(NoKernelAvailableError) as e:
        eng.select("rms_norm", SelectionContext(operation="rms_norm", device="cpu", dtype="float32"))
    msg = str(e.value)
    assert "gpu_a: device cpu not supported (needs {cuda})" in msg
    assert "half_b: dtype float32 not in {float16}" in msg
    assert dict(e.value.rejections)["gpu_a"] == ("device cpu not supported (needs {cuda})",)


def test_policy_rules_and_denies_change_the_ranking(backends):
    reg = KernelRegistry([norm("a_norm", 60), norm("b_norm", 10)])
    policy = load_policy({"version": "1", "dispatch_rules": [
        {"operation": "rms_norm", "conditions": {"hidden_size_gte": 1024}, "kernel": "b_norm", "priority": 100}]},
        registry=reg)
    eng = SelectionEngine(reg, backends, PolicyEngine(policy, reg))
    small = SelectionContext(operation="rms_norm", hidden_size=64, device="cpu")
    big = SelectionContext(operation="rms_norm", hidden_size=4096, device="cpu")
    assert eng.select("rms_norm", small).kernel_id == "a_norm"
    assert eng.select("rms_norm", big).kernel_id == "b_norm"
    deny = load_policy({"version": "1", "kernel_denies": ["a_*"]}, registry=reg)
    eng = SelectionEngine(reg, backends, PolicyEngine(deny, reg))
    ex = eng.explain("rms_norm", small)
    assert ex.chosen == "b_norm" and any("kernel_denies" in r for r in ex["a_norm"].reasons)


def test_policy_thresholds_split_buckets(backends):
    """999 and 1001 share a power-of-two bucket, but a rule at 1000 must see them apart."""
    reg = KernelRegistry([KernelSpec("short", "attention.*", "torch", "layerzero.kernels.reference:attention", priority=50),
                          KernelSpec("long", "attention.*", "torch", "layerzero.kernels.reference:attention", priority=10)])
    policy = load_policy({"version": "1", "dispatch_rules": [
        {"operation": "attention.*", "conditions": {"seq_len_gt": 1000}, "kernel": "long", "priority": 100}]}, registry=reg)
    eng = SelectionEngine(reg, backends, PolicyEngine(policy, reg))
    assert eng.bucketers["seq_len_q"](999) != eng.bucketers["seq_len_q"](1001)
    keyer = make_keyer(eng.bucketers)

    def pick(s):
        q = torch.empty(1, s, 1, 8)
        inputs = {"query": q, "key": q, "value": q}
        key = keyer("attention.causal", inputs, {"is_causal": True})
        plan = eng.lookup(key)
        if plan is None:
            plan = eng.plan("attention.causal", SelectionContext.from_inputs("attention.causal", inputs))
            eng.store(key, plan)
        return plan.primary.kernel_id

    assert [pick(s) for s in (999, 1001, 998, 1002)] == ["short", "long", "short", "long"]
    assert eng.cache_len == 2


def test_decode_growth_does_not_grow_the_cache(backends):
    reg = KernelRegistry([KernelSpec("attn", "attention.*", "torch", "layerzero.kernels.reference:attention")])
    eng = SelectionEngine(reg, backends)
    keyer = make_keyer(eng.bucketers)
    keys = set()
    for sk in range(100, 1100):
        q = torch.empty(1, 1, 4, 8)
        k = torch.empty(1, sk, 4, 8)
        keys.add(keyer("attention.decode", {"query": q, "key": k, "value": k}, {}))
    assert len(keys) <= 5  # power-of-two buckets 128 .. 2048


def test_lru_is_bounded(backends):
    reg = KernelRegistry([norm("n")])
    eng = SelectionEngine(reg, backends, cache_size=8)
    for h in range(50):
        eng.select("rms_norm", SelectionContext(operation="rms_norm", hidden_size=h + 1, device="cpu"))
    assert eng.cache_len == 8
    assert eng.misses == 50


def test_bucketer():
    b = Bucketer()
    assert b(16) != b(17) and b(17) == b(32) and b(33) == b(64)
    b = Bucketer(Bucketer.boundaries_for([40]))
    assert b(39) != b(40) != b(41) and b(41) == b(42)


@pytest.mark.parametrize("batch,seq", [(8, 1024), (1, 4096), (32, 512)])
def test_soft_capped_prefill_on_sm90_runs_flashinfer_where_installed_else_triton_then_flex(batch, seq):
    """Gemma-2's soft-capped prefill: SDPA cannot softcap. On an H200, FlashInfer's kernel took 1.17-1.23x the
    time of SDPA without the softcap, LayerZero's Triton prefill kernel 1.33-1.53x and Flex 2.9-3.3x (head_dim
    128). With the shipped sm90 table and the default policy, an installed FlashInfer must therefore win, the
    Triton kernel must serve the call without it, and Flex must come after both (the fp32 reference stays the
    last resort)."""
    from layerzero.selection.measured_ranking import MeasuredRanking

    ctx = SelectionContext(operation="attention.prefill", batch_size=batch, seq_len_q=seq, num_heads=16,
                           num_kv_heads=8, head_dim=128, dtype="bfloat16", device="cuda", compute_capability=(9, 0),
                           is_causal=True, softcap=50.0)
    chosen = {}
    for installed in (("torch", "torch_flex", "flashinfer", "triton", "liger"), ("torch", "torch_flex", "triton")):
        backends = BackendRegistry([BackendSpec(b, modules=("torch",)) for b in installed])  # present, as stand-ins
        eng = SelectionEngine(get_global_kernel_registry(), backends, PolicyEngine(load_policy(None)),
                              ranking=MeasuredRanking())
        plan = eng.plan("attention.prefill", ctx)
        chosen["flashinfer" in installed] = [k.kernel_id for k in plan.kernels]
        rejected = eng.explain("attention.prefill", ctx).rejected()
        assert any("softcap 50.0 not supported" in r for r in rejected["torch_sdpa_cudnn_attention"])
    assert chosen[True][:2] == ["flashinfer_prefill_attention", "triton_prefill_attention"]
    assert chosen[False][0] == "triton_prefill_attention" and chosen[False][-1] == "reference_attention"
    for plan in chosen.values():
        assert plan.index("triton_prefill_attention") < plan.index("torch_flex_attention")
