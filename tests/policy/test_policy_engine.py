"""PolicyEngine semantics: denies, allows, locks (prefer/strict), rules and ranks, fallback chains, and the
seed's custom-dispatcher helpers."""

from __future__ import annotations

import dataclasses
import hashlib
import textwrap

import pytest

from layerzero.policy import Policy, PolicyEngine, parse_policy_text
from layerzero.context.call_context import SelectionContext

CUDA_BF16 = SelectionContext(operation="attention.causal", batch_size=16, seq_len=512, dtype="bfloat16",
                             device="cuda:0", head_dim=128)


def engine(text: str, registry) -> PolicyEngine:
    return PolicyEngine(parse_policy_text(textwrap.dedent(text), registry=registry), registry)


def verdicts(eng, registry, op="attention.causal", ctx=CUDA_BF16, runnable=None):
    cands = registry.get_by_operation(op)
    out = eng.decide(op, cands, ctx, runnable)
    assert [v.kernel for v in out] == cands  # same order as the candidates
    return {v.kernel_id: v for v in out}


def best(vs) -> str:
    return max((v for v in vs.values() if v.allowed), key=lambda v: v.rank).kernel_id


# ------------------------------------------------------------------------------------------ empty policy
def test_empty_policy_ranks_by_builtin_priority(registry):
    eng = PolicyEngine()
    vs = verdicts(eng, registry)
    assert all(v.allowed and v.reason is None for v in vs.values())
    assert best(vs) == "attn_experimental"  # priority 99 in the test registry
    assert eng.fallback_chain("attention.causal") == ()


# ------------------------------------------------------------------------------------------ denies
def test_denies_match_ids_and_aliases(registry):
    eng = engine("kernel_denies: ['*_experimental', 'xformers_memory_*']\n", registry)
    vs = verdicts(eng, registry)
    assert vs["attn_experimental"].allowed is False
    assert vs["attn_experimental"].reason == "denied by kernel_denies[0] '*_experimental'"
    # matched through its alias xformers_memory_efficient
    assert vs["xformers_attention"].reason == "denied by kernel_denies[1] 'xformers_memory_*'"
    assert vs["torch_sdpa_attention"].allowed


# ------------------------------------------------------------------------------------------ allows
def test_allows_admit_globs_aliases_and_explicit_kernels(registry):
    eng = engine(
        """
        kernel_allows: ["flash_attn_*", "torch_sdpa"]
        fallback_chains: {"attention.*": [reference_attention]}
        """,
        registry,
    )
    vs = verdicts(eng, registry)
    assert vs["flash_attn_v2_attention"].allowed and vs["flash_attn_v3_attention"].allowed
    assert vs["torch_sdpa_attention"].allowed  # through its alias torch_sdpa
    assert vs["reference_attention"].allowed  # named in a fallback chain
    assert not vs["torch_flex_attention"].allowed
    assert vs["torch_flex_attention"].reason.startswith("not in kernel_allows [flash_attn_*, torch_sdpa]")


# ------------------------------------------------------------------------------------------ locks
LOCK = "kernel_locks: {attention.prefill: flash_attention_v2}\n"


def test_lock_allows_only_the_locked_kernel(registry):
    eng = engine(LOCK, registry)
    vs = verdicts(eng, registry, "attention.prefill", runnable={"flash_attn_v2_attention", "torch_sdpa_attention"})
    assert [k for k, v in vs.items() if v.allowed] == ["flash_attn_v2_attention"]
    assert vs["flash_attn_v2_attention"].locked
    assert "locked to flash_attn_v2_attention" in vs["torch_sdpa_attention"].reason
    # other operations are not locked
    assert sum(v.allowed for v in verdicts(eng, registry, "attention.causal").values()) > 1


def test_lock_prefer_ignores_a_kernel_that_cannot_run(registry):
    eng = engine(LOCK, registry)
    vs = verdicts(eng, registry, "attention.prefill", runnable={"torch_sdpa_attention"})
    assert vs["torch_sdpa_attention"].allowed and not vs["torch_sdpa_attention"].locked
    assert vs["torch_sdpa_attention"].reason.startswith(
        "lock to flash_attn_v2_attention ignored: flash_attn_v2_attention cannot run"
    )


def test_lock_strict_rejects_everything_when_the_kernel_cannot_run(registry):
    eng = engine(LOCK + "defaults: {lock_mode: strict}\n", registry)
    vs = verdicts(eng, registry, "attention.prefill", runnable={"torch_sdpa_attention"})
    assert not any(v.allowed for v in vs.values())
    assert "locked to flash_attn_v2_attention" in vs["torch_sdpa_attention"].reason
    assert "which cannot run" in vs["torch_sdpa_attention"].reason


def test_lock_without_runnable_uses_the_candidates(registry):
    eng = engine(LOCK, registry)
    cands = [registry.get("torch_sdpa"), registry.get("reference_attention")]
    out = eng.decide("attention.prefill", cands, CUDA_BF16)
    assert all(v.allowed for v in out) and "ignored" in out[0].reason
    out = eng.decide("attention.prefill", [*cands, registry.get("flash_attention_v2")], CUDA_BF16)
    assert [v.allowed for v in out] == [False, False, True]


def test_deny_wins_over_everything(registry):
    eng = engine("kernel_denies: ['torch_*']\nkernel_locks: {attention.prefill: flash_attention_v2}\n", registry)
    vs = verdicts(eng, registry, "attention.prefill", runnable={"flash_attn_v2_attention"})
    assert vs["torch_sdpa_attention"].reason.startswith("denied by kernel_denies[0]")


# ------------------------------------------------------------------------------------------ rules
RULES = """
defaults: {default_priority: 40}
dispatch_rules:
  - operation: "attention.*"
    conditions: {batch_size_gte: 8, dtype: [fp16, bf16], platform: cuda}
    kernel: flash_attention_v2
    priority: 100
  - operation: "attention.*"
    conditions: {seq_len_gt: 8192}
    kernel: xformers_memory_efficient
    priority: 90
  - operation: attention.causal
    kernel: torch_sdpa
  - operation: attention.decode
    kernel: torch_flex_attention
    priority: 100
"""


def test_applying_rules_rank_above_everything_else(registry):
    eng = engine(RULES, registry)
    vs = verdicts(eng, registry)
    assert best(vs) == "flash_attn_v2_attention" and vs["flash_attn_v2_attention"].rule_index == 0
    ranked = sorted((v for v in vs.values() if v.allowed), key=lambda v: v.rank, reverse=True)
    # rule kernels first (by rule priority), then the rest by built-in priority
    assert [v.kernel_id for v in ranked[:2]] == ["flash_attn_v2_attention", "torch_sdpa_attention"]
    assert vs["torch_sdpa_attention"].rank[1] == 40  # defaults.default_priority
    rest = [v.kernel.priority for v in ranked[2:]]
    assert rest == sorted(rest, reverse=True)
    assert vs["xformers_attention"].rule_index is None  # seq_len 512 is not > 8192


def test_conditions_gate_rules(registry):
    eng = engine(RULES, registry)
    small = dataclasses.replace(CUDA_BF16, batch_size=2, seq_len=16384, seq_len_q=16384, seq_len_k=16384)
    vs = verdicts(eng, registry, ctx=small)
    assert best(vs) == "xformers_attention"
    cpu = dataclasses.replace(CUDA_BF16, device="cpu", platform="cpu")
    assert best(verdicts(eng, registry, ctx=cpu)) == "torch_sdpa_attention"


def test_rule_operation_globs(registry):
    eng = engine(RULES, registry)
    decode = dataclasses.replace(CUDA_BF16, operation="attention.decode", batch_size=1)
    assert best(verdicts(eng, registry, "attention.decode", ctx=decode)) == "torch_flex_attention"
    # the attention.causal-only rule does not touch decode
    assert verdicts(eng, registry, "attention.decode", ctx=decode)["torch_sdpa_attention"].rule_index is None


def test_rule_ties_break_by_builtin_priority_then_order(registry):
    eng = engine(
        """
        dispatch_rules:
          - {operation: rms_norm, kernel: triton_rms_norm, priority: 10}
          - {operation: rms_norm, kernel: torch_rms_norm, priority: 10}
          - {operation: rms_norm, kernel: triton_rms_norm, priority: 5}
        """,
        registry,
    )
    ctx = SelectionContext(operation="rms_norm")
    vs = verdicts(eng, registry, "rms_norm", ctx=ctx)
    assert best(vs) == "torch_rms_norm"  # same rule priority, built-in 80 > 60
    assert vs["triton_rms_norm"].rule_index == 0  # its best rule, not the later priority-5 one


def test_filter_and_score_follow_rank(registry):
    eng = engine(RULES, registry)
    cands = registry.get_by_operation("attention.causal")
    scored = eng.score_kernels(cands, CUDA_BF16)
    vs = eng.decide("attention.causal", cands, CUDA_BF16)
    for (ka, sa), va in zip(scored, vs):
        for (kb, sb), vb in zip(scored, vs):
            if va.allowed and vb.allowed:
                assert (sa > sb) == (va.rank > vb.rank)
    # filter_kernels drops kernels whose constraints reject the context (CUDA-only kernels on a CPU call)
    cpu = dataclasses.replace(CUDA_BF16, device="cpu", platform="cpu")
    filtered = eng.filter_kernels(cands, cpu)
    assert filtered and all(k.backend == "torch" for k in filtered)
    assert filtered[0].kernel_id == "torch_sdpa_attention"  # rule 2 applies
    # the documented PolicyAwareDispatcher pattern
    chosen = max(eng.score_kernels(filtered, cpu), key=lambda x: x[1])[0]
    assert chosen.kernel_id == "torch_sdpa_attention"


def test_filter_kernels_without_operation_uses_served_operations(registry):
    eng = engine(RULES, registry)
    ctx = dataclasses.replace(CUDA_BF16, operation=None)
    cands = registry.get_by_operation("attention.decode")
    ranked = eng.filter_kernels(cands, ctx, check=False)
    # flash_attention_v2's rule (attention.*) applies, flex's decode rule applies too: both beat the rest
    assert {k.kernel_id for k in ranked[:2]} == {"flash_attn_v2_attention", "torch_flex_attention"}


# ------------------------------------------------------------------------------------------ fallback chains
def test_fallback_chain_exact_then_globs_then_fallback_policy(registry):
    eng = engine(
        """
        defaults: {fallback_policy: torch_sdpa}
        fallback_chains:
          "attention.*": [torch_flex_attention, reference_attention]
          attention.decode: [flashinfer_decode, torch_flex_attention]
          rms_norm: [torch_rms_norm, reference_rms_norm]
        """,
        registry,
    )
    assert eng.fallback_chain("attention.decode") == (
        "flashinfer_decode_attention", "torch_flex_attention", "reference_attention", "torch_sdpa_attention",
    )
    assert eng.fallback_chain("attention.causal") == (
        "torch_flex_attention", "reference_attention", "torch_sdpa_attention",
    )
    # the fallback policy serves attention only
    assert eng.fallback_chain("rms_norm") == ("torch_rms_norm", "reference_rms_norm")
    assert eng.fallback_chain("swiglu") == ()


# ------------------------------------------------------------------------------------------ the object
def test_policy_is_immutable_and_hashed(registry):
    text = "version: '3'\nkernel_locks: {rms_norm: torch_rms_norm}\nkernel_denies: ['*_debug']\n"
    policy = parse_policy_text(text, registry=registry)
    assert policy.config_hash == hashlib.sha256(text.encode()).hexdigest()
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.version = "4"  # type: ignore[misc]
    with pytest.raises(TypeError):
        policy.locks["rms_norm"] = "x"  # type: ignore[index]
    assert isinstance(policy.denies, tuple) and isinstance(policy.rules, tuple)
    assert Policy.empty().is_empty and not policy.is_empty


def test_thresholds(registry):
    policy = parse_policy_text(
        textwrap.dedent(
            """
            dispatch_rules:
              - {operation: rms_norm, kernel: torch_rms_norm, conditions: {batch_size_gte: 8, seq_len_in: [64, 4096]}}
              - {operation: rms_norm, kernel: torch_rms_norm, conditions: {seq_len_gt: 8192, dtype: bf16}}
              - {operation: rms_norm, kernel: torch_rms_norm, conditions: {seq_len_q_lt: 100}}
            """
        ),
        registry=registry,
    )
    assert policy.thresholds("seq_len") == (64, 4096, 8192)
    assert policy.thresholds("seq_len", "seq_len_q") == (64, 100, 4096, 8192)
    assert policy.thresholds("batch_size") == (8,)
    assert policy.thresholds("dtype") == ()


def test_set_policy_swaps_atomically(registry):
    eng = PolicyEngine(registry=registry)
    new = parse_policy_text("kernel_denies: ['torch_*']\n", registry=registry)
    eng.set_policy(new)
    assert eng.policy is new
    assert not verdicts(eng, registry)["torch_sdpa_attention"].allowed
    with pytest.raises(TypeError):
        eng.set_policy({"kernel_denies": []})  # type: ignore[arg-type]


def test_engine_load_keeps_old_policy_on_error(tmp_path, registry):
    from layerzero.errors import ConfigValidationError

    good = tmp_path / "p.yaml"
    good.write_text("kernel_denies: ['*_debug']\n")
    eng = PolicyEngine(registry=registry)
    first = eng.load(good)
    good.write_text("kernel_denies: ['[']\n")
    with pytest.raises(ConfigValidationError):
        eng.load(good)
    assert eng.policy is first


def test_to_dict_round_trips(registry):
    from lz_policy_registry import SEED_YAML

    from layerzero.policy import load_policy

    policy = load_policy(SEED_YAML, registry)
    again = load_policy(policy.to_dict(), registry)
    assert again.to_dict() == policy.to_dict()
    extra = parse_policy_text(
        "dispatch_rules:\n  - {operation: 'attention.*', kernel: torch_sdpa, conditions: "
        "{compute_capability_in: [[8, 0], '9.0'], attn_mask_in: [null, bool], softcap: null}}\n",
        registry=registry,
    )
    assert load_policy(extra.to_dict(), registry).to_dict() == extra.to_dict()


def test_verdicts_are_reused_per_policy(registry):
    eng = engine(RULES, registry)
    cands = registry.get_by_operation("attention.causal")
    first = eng.decide("attention.causal", cands, CUDA_BF16)
    second = eng.decide("attention.causal", cands, CUDA_BF16)
    assert all(a is b for a, b in zip(first, second))
    other = dataclasses.replace(CUDA_BF16, batch_size=1)
    changed = {v.kernel_id: v for v in eng.decide("attention.causal", cands, other)}
    assert changed["flash_attn_v2_attention"].rule_index is None  # no stale rule verdict


def test_explain_rules_names_failing_conditions(registry):
    eng = engine(RULES, registry)
    small = dataclasses.replace(CUDA_BF16, batch_size=4, device="cpu", platform="cpu")
    report = {i: why for i, _, why in eng.explain_rules("attention.causal", small)}
    assert report[0] == ("batch_size_gte 8: batch_size is 4", "platform 'cuda': platform is 'cpu'")
    assert report[1] == ("seq_len_gt 8192: seq_len is 512",)
    assert report[2] == ()  # applies
    assert 3 not in report  # a decode rule
    unknown = {i: why for i, _, why in eng.explain_rules("attention.causal", SelectionContext())}
    assert "batch_size_gte 8: batch_size is unknown" in unknown[0]


def test_policy_pickles_and_deepcopies(registry):
    import copy
    import pickle

    from lz_policy_registry import SEED_YAML

    from layerzero.policy import load_policy

    policy = load_policy(SEED_YAML, registry)
    for clone in (pickle.loads(pickle.dumps(policy)), copy.deepcopy(policy)):
        assert clone.to_dict() == policy.to_dict() and clone.config_hash == policy.config_hash
        assert clone.rules[0].holds(CUDA_BF16) == policy.rules[0].holds(CUDA_BF16)
        assert clone.fallback_chain("rms_norm") == policy.fallback_chain("rms_norm")
