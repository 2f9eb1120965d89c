"""How ``compare()`` and ``compare_policies()`` take a policy: a path, a mapping, a ``Policy`` object or a
kernel map (``{"rms_norm": "reference_rms_norm"}``, operation -> kernel id, no policy keys)."""

from __future__ import annotations

from typing import Any, Mapping

__all__ = ["is_kernel_map", "patch_arguments", "policy_object"]

_TOP_LEVEL_POLICY_KEYS = frozenset(
    {"version", "defaults", "dispatch_rules", "kernel_locks", "kernel_denies", "kernel_allows", "fallback_chains"}
)


def policy_object(policy: Any) -> Any:
    from layerzero.policy import Policy, load_policy

    if isinstance(policy, Policy):
        return policy
    if isinstance(policy, Mapping) and is_kernel_map(policy):
        return load_policy({"kernel_locks": dict(policy)})
    return load_policy(policy)


def is_kernel_map(policy: Mapping[str, Any]) -> bool:
    """``{"rms_norm": "torch_rms_norm", "attention.*": "torch_sdpa"}``: operation -> kernel, no policy keys."""
    from layerzero.operations import expand

    return bool(policy) and all(isinstance(k, str) and k not in _TOP_LEVEL_POLICY_KEYS and expand(k)
                                and isinstance(v, str) for k, v in policy.items())


def patch_arguments(policy: Any) -> dict[str, Any]:
    """How ``layerzero_hf.patch`` takes a policy: a kernel map as ``kernels=``, anything else as ``policy=``
    (None: the rules and default policy)."""
    if policy is None:
        return {}
    if isinstance(policy, Mapping) and is_kernel_map(policy):
        return {"kernels": dict(policy)}
    return {"policy": policy}
