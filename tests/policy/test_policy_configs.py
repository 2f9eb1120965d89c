"""The shipped configs: the example kernels.yaml (verbatim) and the default policy validate, aliases resolve to
canonical ids, and its rules mean what its comments say."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml
from lz_policy_registry import REPO, SEED_YAML

from layerzero.policy import PolicyEngine, default_policy_path, load_policy
from layerzero.registry import get_global_kernel_registry
from layerzero.context.call_context import SelectionContext

EXAMPLES = sorted((REPO / "configs" / "examples").glob("*.yaml"))


def kernel_names(path: Path) -> set[str]:
    """Every kernel name a config mentions (not globs)."""
    doc = yaml.safe_load(path.read_text())
    names = {r["kernel"] for r in doc.get("dispatch_rules") or []}
    names |= set((doc.get("kernel_locks") or {}).values())
    for chain in (doc.get("fallback_chains") or {}).values():
        names |= set(chain)
    if (doc.get("defaults") or {}).get("fallback_policy"):
        names.add(doc["defaults"]["fallback_policy"])
    return names


def test_seed_yaml_loads_and_resolves_aliases(registry):
    policy = load_policy(SEED_YAML, registry)
    assert policy.version == "1.0" and policy.source == str(SEED_YAML)
    assert [r.kernel for r in policy.rules] == [
        "flash_attn_v2_attention", "xformers_attention", "flashinfer_decode_attention", "liger_rms_norm",
    ]
    assert [r.kernel_name for r in policy.rules][:2] == ["flash_attention_v2", "xformers_memory_efficient"]
    assert dict(policy.locks) == {"attention.prefill": "flash_attn_v2_attention"}
    assert policy.defaults.fallback_policy == "torch_sdpa_attention"
    assert policy.fallback_chain("rms_norm") == ("liger_rms_norm", "triton_rms_norm", "torch_rms_norm")
    assert policy.fallback_chain("attention.causal") == (
        "flash_attn_v2_attention", "xformers_attention", "torch_sdpa_attention",
    )
    assert policy.thresholds("batch_size") == (8,) and policy.thresholds("seq_len") == (8192,)


def test_seed_semantics(registry):
    eng = PolicyEngine(load_policy(SEED_YAML, registry), registry)
    big = SelectionContext(operation="attention.causal", batch_size=8, seq_len=256, dtype="float16", device="cuda")
    cands = registry.get_by_operation("attention.causal")
    ranked = sorted((v for v in eng.decide("attention.causal", cands, big) if v.allowed), key=lambda v: -v.rank[0])
    assert ranked[0].kernel_id == "flash_attn_v2_attention"
    out = {v.kernel_id: v for v in eng.decide("attention.causal", cands, big)}
    # torch_sdpa is allowed by its alias; triton/flex/reference are outside kernel_allows
    assert out["torch_sdpa_attention"].allowed and not out["torch_flex_attention"].allowed
    # prefill is locked to FlashAttention-2 when it can run
    pre = eng.decide("attention.prefill", registry.get_by_operation("attention.prefill"), big,
                     runnable={"flash_attn_v2_attention", "torch_sdpa_attention"})
    assert [v.kernel_id for v in pre if v.allowed] == ["flash_attn_v2_attention"]
    # rms_norm: liger by rule on CUDA; triton/torch are admitted because the fallback chain names them
    norm = {v.kernel_id: v for v in eng.decide("rms_norm", registry.get_by_operation("rms_norm"),
                                               dataclasses.replace(big, operation="rms_norm"))}
    assert norm["liger_rms_norm"].rule_index == 3
    assert norm["triton_rms_norm"].allowed and norm["torch_rms_norm"].allowed
    assert not norm["reference_rms_norm"].allowed
    assert norm["rms_norm_debug"].reason == "denied by kernel_denies[1] '*_debug'"


@pytest.mark.parametrize("path", [default_policy_path(), *EXAMPLES], ids=lambda p: Path(p).name)
def test_configs_validate_against_the_test_registry(path, registry):
    load_policy(path, registry)


@pytest.mark.parametrize("path", [default_policy_path(), *EXAMPLES], ids=lambda p: Path(p).name)
def test_configs_validate_against_the_global_registry(path):
    reg = get_global_kernel_registry()
    missing = sorted(n for n in kernel_names(Path(path)) if n not in reg)
    if missing:
        pytest.skip(f"global catalogue does not register {missing} yet")
    load_policy(path)


def test_default_policy_is_the_default():
    assert default_policy_path() == REPO / "configs" / "default_policy.yaml" or default_policy_path().is_file()
    policy = load_policy(None)
    assert policy.fallback_chain("attention.decode")[-1] == "reference_attention"
    for op in ("rms_norm", "layer_norm", "rope", "swiglu", "geglu"):
        assert policy.fallback_chain(op)[-1] == f"reference_{op}"
