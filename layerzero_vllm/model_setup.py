"""One LayerZero orchestrator per model served by vLLM, built from the same file formats as the
Transformers integration.

vLLM constructs a model's layers inside ``set_current_vllm_config(...)``, so an op being built can see
the model's Hugging Face config. The first op of a model resolves the per-model rules (only when the user
names a rules file: ``$LAYERZERO_RULES``, else ``$LAYERZERO_HF_RULES``; the shipped ``configs/models.yaml``
tunes Transformers models and does not apply inside vLLM) and the policy (``$LAYERZERO_POLICY``) into an
orchestrator registered in :mod:`layerzero.ops`; every op of that model dispatches through it by name.
Its policy is :func:`layerzero_vllm.exact.compose`: vLLM's own kernels locked under whatever the rules
and the user's policy say. Two models in one process keep separate policies, breakers and telemetry.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

logger = logging.getLogger("vllm.plugins.layerzero")

RULES_ENV = "LAYERZERO_RULES"
HF_RULES_ENV = "LAYERZERO_HF_RULES"  # the Transformers integration's variable: one rules file can serve both


def rules_path() -> str | None:
    """The per-model rules file: ``$LAYERZERO_RULES``, else ``$LAYERZERO_HF_RULES``, else None (shipped)."""
    return os.environ.get(RULES_ENV) or os.environ.get(HF_RULES_ENV) or None

_lock = threading.Lock()
_by_config: dict[int, Any] = {}  # id(hf_config) -> layerzero_hf ModelSetup
_configs: list[Any] = []  # keeps the configs alive so their ids stay unique while they are keys


def current_hf_config() -> Any | None:
    """The Hugging Face config of the model vLLM is building now, or None outside model construction."""
    try:
        from vllm.config import get_current_vllm_config_or_none
    except ImportError:  # older layouts
        from vllm.config.vllm import get_current_vllm_config_or_none  # type: ignore[no-redef]
    cfg = get_current_vllm_config_or_none()
    model_config = getattr(cfg, "model_config", None) if cfg is not None else None
    return getattr(model_config, "hf_config", None) if model_config is not None else None


def orchestrator_for_current_model() -> str | None:
    """Name of the registered orchestrator for the model under construction (None: the global one)."""
    hf_config = current_hf_config()
    if hf_config is None:
        return plugin_orchestrator()
    key = id(hf_config)
    setup = _by_config.get(key)
    if setup is None:
        with _lock:
            setup = _by_config.get(key)
            if setup is None:
                from layerzero_hf.loading import build_setup

                from layerzero_vllm.exact import compose

                setup = build_setup(hf_config, rules=rules_path() or False,
                                    policy=os.environ.get("LAYERZERO_POLICY") or None)
                setup.orchestrator.set_policy(compose(setup.resolution.policy_mapping()))
                _by_config[key] = setup
                _configs.append(hf_config)
                logger.info("LayerZero orchestrator %s for %s (rules: %s, arm: %s)", setup.name,
                            setup.facts.model_type, ", ".join(setup.resolution.rules) or "none",
                            setup.arm)
    return setup.name


def setups() -> list[Any]:
    """The per-model setups this process built (for telemetry and reports)."""
    return list(_by_config.values())


PLUGIN_ORCHESTRATOR = "layerzero_vllm"
_plugin: dict[str, Any] = {}


def plugin_orchestrator() -> str:
    """Name of the plugin's orchestrator for ops built outside a model (no Hugging Face config in scope):
    the user's policy over the exact locks, without per-model rules. Registered on first use, so the
    process-wide LayerZero dispatcher is never touched by the plugin."""
    if PLUGIN_ORCHESTRATOR not in _plugin:
        with _lock:
            if PLUGIN_ORCHESTRATOR not in _plugin:
                from layerzero import ops
                from layerzero.dispatch import create_orchestrator

                from layerzero_vllm.exact import user_policy

                orchestrator = create_orchestrator(policy=user_policy(os.environ.get("LAYERZERO_POLICY") or None))
                ops.register_orchestrator(PLUGIN_ORCHESTRATOR, orchestrator)
                _plugin[PLUGIN_ORCHESTRATOR] = orchestrator
    return PLUGIN_ORCHESTRATOR


def orchestrators() -> dict[str, Any]:
    """Every orchestrator the plugin's layers may dispatch through in this process, by name."""
    found = {s.name: s.orchestrator for s in setups()}
    found.update(_plugin)
    return found
