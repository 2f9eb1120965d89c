"""One LayerZero orchestrator per model served by vLLM, built from the same file formats as the
Transformers integration, through the framework-neutral :mod:`layerzero.model_setup`.

vLLM constructs a model's layers inside ``set_current_vllm_config(...)``, so an op being built can see
the model's Hugging Face config. The first op of a model resolves the per-model rules (only when the user
names a rules file: ``$LAYERZERO_RULES``, else ``$LAYERZERO_HF_RULES``; the shipped ``configs/models.yaml``
tunes Transformers models and does not apply inside vLLM) and the policy (``$LAYERZERO_POLICY``) into an
orchestrator registered in :mod:`layerzero.ops`; every op of that model dispatches through it by name.
Its policy is :func:`layerzero_vllm.exact.compose`: vLLM's own kernels locked under whatever the rules
and the user's policy say. Two models in one process keep separate policies, breakers and telemetry.

The setup is bound to the config object through the core's weak-reference lifecycle: when vLLM drops the
model (and with it the config), the orchestrator is unregistered, its watcher stopped and its layer plans
forgotten.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from layerzero.data_files import MODEL_RULES, find_data_file
from layerzero.model_setup import ModelSetup, SetupBindings, build_setup

logger = logging.getLogger("vllm.plugins.layerzero")

RULES_ENV = "LAYERZERO_RULES"
HF_RULES_ENV = "LAYERZERO_HF_RULES"  # the Transformers integration's variable: one rules file can serve both
NAME_PREFIX = "layerzero_vllm"


def rules_path() -> str | None:
    """The per-model rules file: ``$LAYERZERO_RULES``, else ``$LAYERZERO_HF_RULES``, else None (none:
    the shipped rules are for Transformers models)."""
    path = find_data_file(MODEL_RULES, env_var=(RULES_ENV, HF_RULES_ENV), packaged=False)
    return os.fspath(path) if path is not None else None


_lock = threading.Lock()
_by_config = SetupBindings()  # hf_config -> its model's setup, released when the config is collected


def current_hf_config() -> Any | None:
    """The Hugging Face config of the model vLLM is building now, or None outside model construction."""
    try:
        from vllm.config import get_current_vllm_config_or_none
    except ImportError:  # older layouts
        from vllm.config.vllm import get_current_vllm_config_or_none  # type: ignore[no-redef]
    cfg = get_current_vllm_config_or_none()
    model_config = getattr(cfg, "model_config", None) if cfg is not None else None
    return getattr(model_config, "hf_config", None) if model_config is not None else None


def model_facts(hf_config: Any) -> dict[str, Any]:
    """What per-model rules match on, read from the Hugging Face config vLLM loaded for the model."""
    facts: dict[str, Any] = {
        "model_type": getattr(hf_config, "model_type", None),
        "architectures": tuple(getattr(hf_config, "architectures", None) or ()),
        "name_or_path": str(getattr(hf_config, "_name_or_path", None) or getattr(hf_config, "name_or_path", None)
                            or ""),
    }
    for key in ("hidden_size", "num_hidden_layers"):
        value = getattr(hf_config, key, None)
        if isinstance(value, int):
            facts[key] = value
    return facts


def _build(hf_config: Any) -> ModelSetup:
    from layerzero_vllm import planning
    from layerzero_vllm.exact import compose

    setup = build_setup(model_facts(hf_config), rules=rules_path() or False,
                        policy=os.environ.get("LAYERZERO_POLICY") or None, name_prefix=NAME_PREFIX)
    setup.orchestrator.set_policy(compose(setup.resolution.policy_mapping()))
    setup.on_release.append(lambda name=setup.name: planning.forget(name))
    logger.info("LayerZero orchestrator %s for %s (rules: %s, arm: %s)", setup.name, setup.facts.model_type,
                ", ".join(setup.resolution.rules) or "none", setup.arm)
    return setup


def orchestrator_for_current_model() -> str | None:
    """Name of the registered orchestrator for the model under construction (None: the global one)."""
    hf_config = current_hf_config()
    if hf_config is None:
        return plugin_orchestrator()
    return _by_config.get_or_build(hf_config, lambda: _build(hf_config)).name


def setups() -> list[ModelSetup]:
    """The per-model setups of the models alive in this process (for telemetry and reports)."""
    return _by_config.setups()


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

