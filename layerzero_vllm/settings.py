"""Environment switches of the vLLM plugin, read in one place.

vLLM starts its engine core and workers with ``spawn``: the only state that reaches them is the
environment and the installed entry point, so every switch of this plugin is an environment variable
(set before ``vllm.LLM(...)`` is created; each process reads them when the plugin loads).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

DISABLE_ENV = "LAYERZERO_VLLM_DISABLE"
ATTENTION_ENV = "LAYERZERO_VLLM_ATTENTION"
NATIVE_ENV = "LAYERZERO_VLLM_NATIVE"
TELEMETRY_DIR_ENV = "LAYERZERO_VLLM_TELEMETRY_DIR"
POLICY_ENV = "LAYERZERO_POLICY"  # the same variable the global dispatcher reads (layerzero.dispatch.api)

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


def _flag(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"environment variable {name}={raw!r} is not a boolean; use 1/0, true/false, yes/no or on/off")


@dataclass(frozen=True)
class PluginSettings:
    """What the plugin does in this process.

    disabled: register nothing (``LAYERZERO_VLLM_DISABLE=1``); vLLM runs exactly as without the plugin.
    attention: also override vLLM's CPU attention backend (``LAYERZERO_VLLM_ATTENTION=1``; off by default
        because it gathers the paged KV cache per request in Python, slower than vLLM's fused kernel).
    native_layerzero: ``forward_native`` also dispatches through LayerZero (``LAYERZERO_VLLM_NATIVE=layerzero``).
        The default (``vllm``) keeps vLLM's own PyTorch code there, so ``custom_ops=["none"]`` /
        ``"-RMSNorm"`` hand the op back to vLLM and its compiler passes, as vLLM documents for custom ops.
    telemetry_dir: where each process writes its telemetry snapshot at exit, or None.
    policy_path: the LayerZero policy file, or None for the packaged default.
    """

    disabled: bool
    attention: bool
    native_layerzero: bool
    telemetry_dir: str | None
    policy_path: str | None

    @classmethod
    def from_env(cls) -> "PluginSettings":
        native = os.environ.get(NATIVE_ENV, "vllm").strip().lower() or "vllm"
        if native not in ("vllm", "layerzero"):
            raise ValueError(
                f"environment variable {NATIVE_ENV}={os.environ.get(NATIVE_ENV)!r} is not 'vllm' or 'layerzero'; "
                "'vllm' (default) keeps vLLM's forward_native, 'layerzero' dispatches it through LayerZero too"
            )
        return cls(
            disabled=_flag(DISABLE_ENV),
            attention=_flag(ATTENTION_ENV),
            native_layerzero=native == "layerzero",
            telemetry_dir=os.environ.get(TELEMETRY_DIR_ENV) or None,
            policy_path=os.environ.get(POLICY_ENV) or None,
        )
