"""LayerZero inside vLLM, as a ``vllm.general_plugins`` entry point.

vLLM runs :func:`register` (no arguments) in every process it starts: the process that creates
``vllm.LLM``, the engine core and each worker. It:

1. does nothing when ``LAYERZERO_VLLM_DISABLE=1`` (vLLM then runs exactly as without the plugin);
2. validates the configuration first (``$LAYERZERO_POLICY``, ``$LAYERZERO_RULES`` and the plugin's own
   switches), so a bad file stops the engine at start with LayerZero's error (file, field, value, fix)
   instead of failing inside a worker's first forward pass;
3. registers out-of-tree replacements for vLLM's ``RMSNorm``, ``GemmaRMSNorm``, ``TPAwareRMSNorm``,
   ``TPAwareGemmaRMSNorm``, ``SiluAndMul`` and the rotary-embedding classes whose forward is the plain
   cos/sin-cache rotation (:mod:`layerzero_vllm.custom_ops`);
4. with ``LAYERZERO_VLLM_ATTENTION=1``, overrides the CPU attention backend (:mod:`layerzero_vllm.attention`);
5. with ``LAYERZERO_VLLM_TELEMETRY_DIR``, makes each process write its telemetry there at exit.

It is idempotent: a second call in the same process changes nothing. Telemetry of the worker processes
is read back with :func:`read_worker_telemetry` (engine started with
``worker_extension_cls="layerzero_vllm.LayerZeroWorkerExtension"``) or from the exit files.
"""

from __future__ import annotations

import logging
from typing import Any

from layerzero.errors import LayerZeroError
from layerzero_vllm.settings import PluginSettings
from layerzero_vllm.telemetry import (
    LayerZeroWorkerExtension,
    read_telemetry_dir,
    read_worker_telemetry,
    sum_operation_calls,
    worker_telemetry,
)

__all__ = [
    "LayerZeroWorkerExtension",
    "PluginConfigError",
    "PluginSettings",
    "read_telemetry_dir",
    "read_worker_telemetry",
    "register",
    "registration",
    "sum_operation_calls",
    "worker_telemetry",
]

logger = logging.getLogger("vllm.plugins.layerzero")

_REGISTRATION: dict[str, Any] = {}


class PluginConfigError(LayerZeroError, ValueError):
    """The plugin's configuration (policy file, rules file, environment switches) is invalid."""


def _validate(settings: PluginSettings) -> None:
    import os

    from layerzero.errors import ConfigValidationError

    if settings.policy_path:
        from layerzero.policy import load_policy

        try:
            load_policy(settings.policy_path)
        except ConfigValidationError as exc:
            raise PluginConfigError(
                f"LayerZero vLLM plugin: the policy named by LAYERZERO_POLICY={settings.policy_path!r} is invalid:\n"
                f"{exc}\nFix the file, point LAYERZERO_POLICY at a valid policy (or unset it for the packaged "
                "default), or set LAYERZERO_VLLM_DISABLE=1 to run vLLM without LayerZero."
            ) from exc
    from layerzero_vllm.model_setup import HF_RULES_ENV, RULES_ENV, rules_path

    rules = rules_path()
    variable = RULES_ENV if os.environ.get(RULES_ENV) else HF_RULES_ENV
    if rules:
        try:
            from layerzero_hf.rules import load_rules
        except ImportError as exc:  # pragma: no cover - layerzero_hf ships with layerzero
            raise PluginConfigError(f"{variable}={rules!r} needs layerzero_hf, which failed to import: {exc}")
        try:
            load_rules(rules)
        except ConfigValidationError as exc:
            raise PluginConfigError(
                f"LayerZero vLLM plugin: the rules file named by {variable}={rules!r} is invalid:\n{exc}\n"
                f"Fix the file, unset {variable} for the shipped configs/models.yaml, or set "
                "LAYERZERO_VLLM_DISABLE=1."
            ) from exc


def register() -> None:
    """The ``vllm.general_plugins`` entry point (see the module docstring)."""
    if _REGISTRATION:
        return
    try:
        settings = PluginSettings.from_env()
    except ValueError as exc:
        raise PluginConfigError(f"LayerZero vLLM plugin: {exc}") from exc
    if settings.disabled:
        _REGISTRATION.update(disabled=True, ops={}, attention=None)
        logger.info("LayerZero vLLM plugin disabled by LAYERZERO_VLLM_DISABLE")
        return
    _validate(settings)

    from layerzero_vllm import custom_ops

    custom_ops.set_native_layerzero(settings.native_layerzero)
    ops = custom_ops.register_custom_ops()
    attention = None
    if settings.attention:
        from layerzero_vllm.attention import register_attention_backend

        attention = register_attention_backend()
    if settings.telemetry_dir:
        from layerzero_vllm.telemetry import install_exit_dump

        install_exit_dump(settings.telemetry_dir)
    _REGISTRATION.update(disabled=False, ops=ops, attention=attention, settings=settings)
    logger.info("LayerZero vLLM plugin: %d ops replaced (%s)%s", len(ops), ", ".join(sorted(ops)),
                f"; attention backend {attention} overridden" if attention else "")


def registration() -> dict[str, Any]:
    """What :func:`register` did in this process (empty before it ran)."""
    return dict(_REGISTRATION)
