"""LayerZero inside vLLM, as a ``vllm.general_plugins`` entry point (opt-in).

vLLM runs :func:`register` (no arguments) in every process it starts: the process that creates
``vllm.LLM``, the engine core and each worker. Installing the package changes nothing: it

1. does nothing unless the user opted in (``LAYERZERO_VLLM=1``, or ``layerzero`` listed in vLLM's
   ``VLLM_PLUGINS``), and nothing when ``LAYERZERO_VLLM_DISABLE`` is set (to any value but an explicit
   false: the opt-out can never stop vLLM from starting);
2. registers vLLM's own ops as LayerZero kernels (:mod:`layerzero_vllm.kernels`) and validates the
   configuration (``$LAYERZERO_POLICY``, ``$LAYERZERO_RULES``, the plugin's switches), so a bad file
   stops ``vllm.LLM(...)`` with LayerZero's error (file, field, value, fix); a policy that leaves an
   operation with no kernel at all stops it too;
3. registers out-of-tree subclasses of vLLM's ``RMSNorm``, ``GemmaRMSNorm``, ``TPAwareRMSNorm``,
   ``TPAwareGemmaRMSNorm``, ``SiluAndMul`` and the plain cos/sin-cache rotary embeddings
   (:mod:`layerzero_vllm.custom_ops`). Each layer runs vLLM's own forward unless the policy chooses
   another kernel for it (exact by default, :mod:`layerzero_vllm.exact`), and checks at model load that a
   kernel can run it (:mod:`layerzero_vllm.planning`);
4. puts its settings into vLLM's compile-cache key (:mod:`layerzero_vllm.compile_cache`);
5. with ``LAYERZERO_VLLM_ATTENTION=experimental``, overrides the CPU attention backend (slower than
   vLLM's: for kernel-choice experiments only, :mod:`layerzero_vllm.attention`);
6. with ``LAYERZERO_VLLM_TELEMETRY_DIR``, makes each process write its telemetry there at exit.

It is idempotent: a second call in the same process changes nothing. Telemetry of the worker processes
is read back with :func:`read_worker_telemetry` (engine started with
``worker_extension_cls="layerzero_vllm.LayerZeroWorkerExtension"``) or from the exit files.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from layerzero_vllm.errors import PluginConfigError
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
                "default), or unset LAYERZERO_VLLM to run vLLM without LayerZero."
            ) from exc
    from layerzero.model_setup import load_rules

    from layerzero_vllm.model_setup import HF_RULES_ENV, RULES_ENV, rules_path

    rules = rules_path()
    variable = RULES_ENV if os.environ.get(RULES_ENV) else HF_RULES_ENV
    if rules:
        try:
            load_rules(rules, origin=f"${variable}")
        except ConfigValidationError as exc:
            raise PluginConfigError(
                f"LayerZero vLLM plugin: the rules file named by {variable}={rules!r} is invalid:\n{exc}\n"
                f"Fix the file, unset {variable} (no per-model rules), or unset LAYERZERO_VLLM."
            ) from exc


def _check_policy_leaves_kernels(settings: PluginSettings) -> None:
    """Stop at ``vllm.LLM(...)`` when the policy leaves an operation with no kernel in fp32 and bf16 alike
    (a deny-all policy), before any worker starts. Per-model choices are checked again at model load,
    in the model's dtype and shapes (:mod:`layerzero_vllm.planning`)."""
    import torch

    from layerzero.dispatch import create_orchestrator
    from layerzero.errors import LayerZeroError

    from layerzero_vllm.diagnose import no_kernel_error
    from layerzero_vllm.exact import user_policy

    orchestrator = create_orchestrator(policy=user_policy(settings.policy_path))
    for operation, make in _PROBES.items():
        failures = []
        for dtype in (torch.float32, torch.bfloat16):
            inputs, kwargs = make(dtype)
            try:
                orchestrator.select(operation, inputs, **kwargs)
            except LayerZeroError as exc:
                failures.append(exc)
        if len(failures) == 2:
            raise no_kernel_error(operation, "any layer (float32 and bfloat16 probes)", failures[-1]) from failures[-1]


def _probe_rms_norm(dtype: Any) -> tuple[dict, dict]:
    import torch

    return {"x": torch.empty(4, 64, dtype=dtype), "weight": torch.empty(64, dtype=dtype)}, {"casting": "llama"}


def _probe_rope(dtype: Any) -> tuple[dict, dict]:
    import torch

    q = torch.empty(1, 4, 1, 64, dtype=dtype)
    return {"q": q, "k": q, "cos": torch.empty(1, 4, 64, dtype=dtype), "sin": torch.empty(1, 4, 64, dtype=dtype)}, \
        {"layout": "bshd"}


def _probe_swiglu(dtype: Any) -> tuple[dict, dict]:
    import torch

    return {"gate": torch.empty(4, 64, dtype=dtype), "up": torch.empty(4, 64, dtype=dtype)}, {}


_PROBES = {"rms_norm": _probe_rms_norm, "rope": _probe_rope, "swiglu": _probe_swiglu}


def register() -> None:
    """The ``vllm.general_plugins`` entry point (see the module docstring)."""
    if _REGISTRATION:
        return
    try:
        settings = PluginSettings.from_env()
    except ValueError as exc:
        raise PluginConfigError(f"LayerZero vLLM plugin: {exc}") from exc
    if not settings.enabled:
        _REGISTRATION.update(disabled=True, ops={}, attention=None, settings=settings)
        if settings.disabled:
            logger.info("LayerZero vLLM plugin: off (LAYERZERO_VLLM_DISABLE is set)")
        else:
            logger.debug("LayerZero vLLM plugin: installed but not enabled (set LAYERZERO_VLLM=1 to use it)")
        return

    from layerzero_vllm import compile_cache, custom_ops
    from layerzero_vllm.kernels import register_kernels

    register_kernels()  # before validation: a policy may name vllm_rms_norm & co.
    _validate(settings)
    _check_policy_leaves_kernels(settings)
    custom_ops.set_native_layerzero(settings.native_layerzero)
    custom_ops.keep_dispatch_in_compiled_graphs()
    ops = custom_ops.register_custom_ops()
    attention = None
    if settings.attention:
        from layerzero_vllm.attention import register_attention_backend

        attention = register_attention_backend()
    if settings.telemetry_dir:
        from layerzero_vllm.telemetry import install_exit_dump

        install_exit_dump(settings.telemetry_dir)
    key = compile_cache.install(settings)
    _REGISTRATION.update(disabled=False, ops=ops, attention=attention, settings=settings, compile_key=key)
    logger.info(
        "LayerZero vLLM plugin: active in pid %d; can replace %d vLLM classes (each layer keeps vLLM's own "
        "forward unless the policy chooses another kernel; the layers built are logged at model load)%s",
        os.getpid(), len(ops), f"; attention backend {attention} overridden (experimental)" if attention else "",
    )


def registration() -> dict[str, Any]:
    """What :func:`register` did in this process (empty before it ran)."""
    return dict(_REGISTRATION)
