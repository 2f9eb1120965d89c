"""How ``compare()`` and ``compare_policies()`` take a policy: a path, a mapping, a ``Policy`` object or a
kernel map (``{"rms_norm": "reference_rms_norm"}``, operation -> kernel id, no policy keys).

Telling the forms apart is framework-neutral (:mod:`layerzero.model_setup.policy_sources`); what is
Transformers-specific is how ``layerzero_hf.patch`` takes each form.
"""

from __future__ import annotations

from typing import Any, Mapping

from layerzero.model_setup import is_kernel_map, policy_object

__all__ = ["is_kernel_map", "patch_arguments", "policy_object"]


def patch_arguments(policy: Any) -> dict[str, Any]:
    """How ``layerzero_hf.patch`` takes a policy: a kernel map as ``kernels=``, anything else as ``policy=``
    (None: the rules and default policy)."""
    if policy is None:
        return {}
    if isinstance(policy, Mapping) and is_kernel_map(policy):
        return {"kernels": dict(policy)}
    return {"policy": policy}
