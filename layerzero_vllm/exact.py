"""Exact by default: inside vLLM, each replaced operation is locked to vLLM's own kernel unless the user's
policy (or rules file) says otherwise.

LayerZero's own kernels are correct to their contract but do not round like vLLM's ops (``F.rms_norm``
and vLLM's CPU RMSNorm differ by up to one ulp on a quarter of bf16 elements; a fused-residual norm that
adds in bf16 differs from vLLM's fp32 sum), and greedy decoding amplifies one-ulp differences into
different tokens. So the plugin makes vLLM's ops LayerZero kernels (:mod:`layerzero_vllm.kernels`) and
adds a *base* lock for each operation, under everything the user configured:

    packaged default policy  <  exact locks  <  rules file (``LAYERZERO_RULES``)  <  ``LAYERZERO_POLICY``

An operation keeps its exact lock unless the user's policy or rules lock it to another kernel, deny
vLLM's kernel (``kernel_denies: [vllm_rms_norm]`` lets LayerZero choose among its own), or list
``kernel_allows`` that exclude it. Those are the ways "the policy allows rounding differences".
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any, Mapping

# operation -> the LayerZero kernel that is vLLM's own op (registered by layerzero_vllm.kernels)
VLLM_KERNELS: dict[str, str] = {
    "rms_norm": "vllm_rms_norm",
    "rope": "vllm_rope",
    "swiglu": "vllm_silu_and_mul",
}

def merge(base: Mapping[str, Any], fragment: Mapping[str, Any]) -> dict[str, Any]:
    """Overlay a policy fragment with LayerZero's one merge rule (``layerzero.policy.merge``), so one policy
    file means the same in vLLM as in the Transformers integration."""
    from layerzero.policy.merge import merge_policy

    return merge_policy(base, fragment)


def read_mapping(path: str) -> dict[str, Any]:
    """A policy file as a mapping (the file was validated by ``load_policy`` before this is called)."""
    import yaml

    with open(path) as fh:
        data = yaml.safe_load(fh.read()) or {}
    return dict(data) if isinstance(data, Mapping) else {}


def default_mapping() -> dict[str, Any]:
    """The packaged default policy as a mapping."""
    from layerzero.policy import default_policy_path

    path = default_policy_path()
    return read_mapping(str(path)) if path is not None else {}


def admits(policy: Any, kernel_id: str) -> bool:
    """Whether ``policy``'s denies and allows leave ``kernel_id`` eligible (locks aside)."""
    if any(fnmatchcase(kernel_id, glob) for glob in policy.denies):
        return False
    if policy.allows and not any(fnmatchcase(kernel_id, glob) for glob in policy.allows):
        return False
    return True


def exact_locks(policy: Any | None) -> dict[str, str]:
    """The base locks to add under ``policy``: vLLM's kernel for every operation ``policy`` neither locks
    nor keeps vLLM's kernel out of."""
    locks = {}
    for operation, kernel_id in VLLM_KERNELS.items():
        if policy is not None and (policy.lock_for(operation) is not None or not admits(policy, kernel_id)):
            continue
        locks[operation] = kernel_id
    return locks


def compose(overrides: Mapping[str, Any] | None) -> Any:
    """The policy a vLLM process uses: packaged default, exact locks, then ``overrides`` (rules merged with
    the user's policy file). Raises ConfigValidationError like ``load_policy``."""
    from layerzero.policy import load_policy

    base = default_mapping()
    plain = load_policy(merge(base, overrides or {}))
    locks = exact_locks(plain)
    if not locks:
        return plain
    return load_policy(merge(merge(base, {"kernel_locks": locks}), overrides or {}))


def user_policy(policy_path: str | None) -> Any:
    """The policy of a process with no per-model rules: default, exact locks, ``policy_path`` on top."""
    return compose(read_mapping(policy_path) if policy_path else None)
