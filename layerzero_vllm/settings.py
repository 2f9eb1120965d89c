"""Environment switches of the vLLM plugin, read in one place.

vLLM starts its engine core and workers with ``spawn``: the only state that reaches them is the
environment and the installed entry point, so every switch of this plugin is an environment variable
(set before ``vllm.LLM(...)`` is created; each process reads them when the plugin loads).

The plugin is opt-in: vLLM runs every installed ``vllm.general_plugins`` entry point, so installing
LayerZero must not change what vLLM computes. It activates only when ``LAYERZERO_VLLM=1`` is set or the
user names it in vLLM's own ``VLLM_PLUGINS`` list. The opt-out (``LAYERZERO_VLLM_DISABLE``) is read
leniently: whatever its value, it can only turn the plugin off, never stop vLLM from starting.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

logger = logging.getLogger("vllm.plugins.layerzero")

ENABLE_ENV = "LAYERZERO_VLLM"
DISABLE_ENV = "LAYERZERO_VLLM_DISABLE"
ATTENTION_ENV = "LAYERZERO_VLLM_ATTENTION"
NATIVE_ENV = "LAYERZERO_VLLM_NATIVE"
TELEMETRY_DIR_ENV = "LAYERZERO_VLLM_TELEMETRY_DIR"
POLICY_ENV = "LAYERZERO_POLICY"  # the same variable the global dispatcher reads (layerzero.dispatch.api)
VLLM_PLUGINS_ENV = "VLLM_PLUGINS"  # vLLM's own allow-list of plugins to load (comma-separated names)
PLUGIN_NAME = "layerzero"  # the entry point's name in pyproject.toml

# The attention backend is kept for kernel-choice experiments only: on vLLM's CPU platform it is 2.5-3.5x
# slower than vLLM's fused paged kernel, so a plain "1" does not enable it (see attention_from_env).
ATTENTION_EXPERIMENTAL = "experimental"

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


def opted_out() -> bool:
    """``LAYERZERO_VLLM_DISABLE`` is set to anything but an explicit false (``0``/``false``/``no``/``off``/empty).

    An unrecognised value (``2``, ``always``) still disables, with a warning: an opt-out must never be the
    reason vLLM fails to start."""
    raw = os.environ.get(DISABLE_ENV)
    if raw is None:
        return False
    value = raw.strip().lower()
    if value in _FALSE:
        return False
    if value not in _TRUE:
        logger.warning("%s=%r is not a boolean; treating it as 1 (the LayerZero plugin stays off)", DISABLE_ENV, raw)
    return True


def listed_in_vllm_plugins() -> bool:
    """The user named this plugin in vLLM's ``VLLM_PLUGINS`` allow-list."""
    raw = os.environ.get(VLLM_PLUGINS_ENV) or ""
    return PLUGIN_NAME in {part.strip() for part in raw.split(",")}


def opted_in() -> bool:
    """``LAYERZERO_VLLM`` is true, or ``VLLM_PLUGINS`` names ``layerzero``. A non-boolean ``LAYERZERO_VLLM``
    raises ValueError naming the variable (the user asked for the plugin and should learn it did not run)."""
    return _flag(ENABLE_ENV) or listed_in_vllm_plugins()


def attention_from_env() -> bool:
    """Whether to override vLLM's CPU attention backend: only ``LAYERZERO_VLLM_ATTENTION=experimental``.

    ``1`` is refused with a ValueError that explains why: the backend is slower than vLLM's on CPU, and a
    plugin that promises never to be slower must not offer it as an ordinary switch."""
    raw = os.environ.get(ATTENTION_ENV)
    if raw is None:
        return False
    value = raw.strip().lower()
    if value in _FALSE:
        return False
    if value == ATTENTION_EXPERIMENTAL:
        return True
    raise ValueError(
        f"environment variable {ATTENTION_ENV}={raw!r}: LayerZero's CPU attention backend is not offered as a "
        f"switch because it is 2.5-3.5x slower than vLLM's CPU_ATTN (it gathers the paged cache per request in "
        f"Python). Unset {ATTENTION_ENV}, or set it to {ATTENTION_EXPERIMENTAL!r} for kernel-choice experiments"
    )


@dataclass(frozen=True)
class PluginSettings:
    """What the plugin does in this process.

    enabled: the user opted in (``LAYERZERO_VLLM=1`` or ``VLLM_PLUGINS`` lists ``layerzero``) and did not
        opt out; otherwise the plugin registers nothing and vLLM runs exactly as without it.
    disabled: ``LAYERZERO_VLLM_DISABLE`` is set (any value but an explicit false).
    attention: override vLLM's CPU attention backend (``LAYERZERO_VLLM_ATTENTION=experimental`` only).
    native_layerzero: ``forward_native`` also dispatches through LayerZero (``LAYERZERO_VLLM_NATIVE=layerzero``).
        The default (``vllm``) keeps vLLM's own PyTorch code there, so ``custom_ops=["none"]`` /
        ``"-RMSNorm"`` (and vLLM's compiled mode) hand the op back to vLLM and its compiler passes.
    telemetry_dir: where each process writes its telemetry snapshot at exit, or None.
    policy_path: the LayerZero policy file, or None for the packaged default.
    """

    enabled: bool
    disabled: bool
    attention: bool
    native_layerzero: bool
    telemetry_dir: str | None
    policy_path: str | None

    @classmethod
    def from_env(cls) -> "PluginSettings":
        """Read the switches; an opted-out or not-opted-in process reads nothing else (so a stray value in
        another switch can never stop vLLM when the plugin is off)."""
        disabled = opted_out()
        if disabled or not opted_in():
            return cls(enabled=False, disabled=disabled, attention=False, native_layerzero=False,
                       telemetry_dir=None, policy_path=None)
        native = os.environ.get(NATIVE_ENV, "vllm").strip().lower() or "vllm"
        if native not in ("vllm", "layerzero"):
            raise ValueError(
                f"environment variable {NATIVE_ENV}={os.environ.get(NATIVE_ENV)!r} is not 'vllm' or 'layerzero'; "
                "'vllm' (default) keeps vLLM's forward_native, 'layerzero' dispatches it through LayerZero too"
            )
        return cls(
            enabled=True,
            disabled=False,
            attention=attention_from_env(),
            native_layerzero=native == "layerzero",
            telemetry_dir=os.environ.get(TELEMETRY_DIR_ENV) or None,
            policy_path=os.environ.get(POLICY_ENV) or None,
        )

    def cache_tag(self) -> str:
        """A short string that differs between plugin variants whose compiled graphs differ (for vLLM's
        compile-cache key): off, on with vLLM's forward_native, on with LayerZero's."""
        if not self.enabled:
            return "layerzero-off"
        return f"layerzero-on-native-{'layerzero' if self.native_layerzero else 'vllm'}"
