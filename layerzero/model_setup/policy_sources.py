"""The ways a caller hands a model its policy: a path, a mapping, a ``Policy`` object or a kernel map.

A kernel map (``{"rms_norm": "reference_rms_norm"}``: operation -> kernel id, no policy keys) is the short
form an A/B comparison or a rules arm uses; it becomes ``kernel_locks``. The packaged default policy is
read as a mapping so rule overrides add to it rather than replace it.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from layerzero.config_files import load_yaml_file
from layerzero.data_files import DEFAULT_POLICY, find_data_file
from layerzero.dispatch import DispatchConfig, DispatchMode
from layerzero.errors import ConfigValidationError, ValidationProblem
from layerzero.operations import expand
from layerzero.policy import Policy, load_policy
from layerzero.policy.schema import TOP_LEVEL_KEYS

__all__ = ["default_dispatch_config", "default_policy_mapping", "is_kernel_map", "policy_mapping", "policy_object"]


def is_kernel_map(policy: Mapping[str, Any]) -> bool:
    """``{"rms_norm": "torch_rms_norm", "attention.*": "torch_sdpa"}``: operation -> kernel, no policy keys."""
    return bool(policy) and all(isinstance(k, str) and k not in TOP_LEVEL_KEYS and expand(k)
                                and isinstance(v, str) for k, v in policy.items())


def policy_object(policy: Any) -> Policy:
    """A ``Policy`` from a Policy (as is), a kernel map (as ``kernel_locks``), a mapping or a path."""
    if isinstance(policy, Policy):
        return policy
    if isinstance(policy, Mapping) and is_kernel_map(policy):
        return load_policy({"kernel_locks": dict(policy)})
    return load_policy(policy)


def policy_mapping(policy: Mapping[str, Any] | str | os.PathLike[str]) -> dict[str, Any]:
    """A policy path or mapping as a mapping (read through the guarded reader: regular files only,
    alias/size limits), to merge rule overrides into."""
    if isinstance(policy, Mapping):
        return dict(policy)
    if isinstance(policy, (str, os.PathLike)):
        path = os.fspath(policy)
        data = load_yaml_file(path, "policy file") or {}
        if not isinstance(data, Mapping):
            raise ConfigValidationError([ValidationProblem("<root>", type(data).__name__, "expected a mapping", path)])
        return dict(data)
    raise TypeError(f"policy: expected a path, a mapping or a layerzero.policy.Policy, got {type(policy).__name__}")


def default_policy_mapping() -> dict[str, Any]:
    """The packaged default policy as a mapping, so rule overrides add to it rather than replace it."""
    path = find_data_file(DEFAULT_POLICY)
    if path is None:
        return {}
    data = load_yaml_file(path, "policy file") or {}
    return dict(data) if isinstance(data, Mapping) else {}


def default_dispatch_config() -> DispatchConfig:
    """Dynamic dispatch under the packaged default policy: what a per-model orchestrator gets by default."""
    path = find_data_file(DEFAULT_POLICY)
    return DispatchConfig(mode=DispatchMode.DYNAMIC, policy_path=str(path) if path else None)
