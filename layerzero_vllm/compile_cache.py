"""Put the plugin's settings into vLLM's compile-cache key.

vLLM names its ``torch.compile`` cache directory after a hash of its config, its code and the values of
its known environment variables (``vllm.envs.compile_factors()``, which walks
``vllm.envs.environment_variables``). The plugin changes what a compiled graph contains
(``LAYERZERO_VLLM_NATIVE=layerzero`` puts opaque ``layerzero::*`` ops in it, a policy changes which
layers call LayerZero), so without this a run with the plugin on could load a graph compiled with it off,
or the reverse. Adding one entry to that table, in every process where the plugin is active, gives each
plugin variant its own directory; a process without the plugin hashes exactly as plain vLLM.
"""

from __future__ import annotations

import hashlib
import logging

from layerzero_vllm.settings import PluginSettings

logger = logging.getLogger("vllm.plugins.layerzero")

FACTOR = "LAYERZERO_VLLM_COMPILE_KEY"


def _file_digest(path: str | None) -> str:
    if not path:
        return "none"
    try:
        with open(path, "rb") as fh:
            return hashlib.sha256(fh.read()).hexdigest()[:16]
    except OSError:
        return "unreadable"


def compile_key(settings: PluginSettings) -> str:
    """The plugin's part of the key: variant, policy file content, rules file content."""
    from layerzero_vllm.model_setup import rules_path

    return "|".join((settings.cache_tag(), f"policy={_file_digest(settings.policy_path)}",
                     f"rules={_file_digest(rules_path())}", f"attention={int(settings.attention)}"))


def install(settings: PluginSettings) -> str | None:
    """Register :data:`FACTOR` among vLLM's hashed environment variables; returns the key, or None when
    this vLLM has no such table (then the plugin says so, and users should set ``VLLM_CACHE_ROOT``)."""
    try:
        import vllm.envs as envs
    except ImportError:
        return None
    table = getattr(envs, "environment_variables", None)
    if not isinstance(table, dict):
        logger.warning("LayerZero vLLM plugin: this vLLM has no envs.environment_variables table; its compile "
                       "cache does not separate plugin variants (set VLLM_CACHE_ROOT per variant)")
        return None
    key = compile_key(settings)
    table[FACTOR] = lambda: key
    return key
