"""Say which of the user's files and fields leave an operation without a runnable kernel.

The policy a vLLM process runs is a merge (packaged default, exact locks, rules, the user's policy), and a
``NoKernelAvailableError`` raised from it indexes into that merge, which the user never wrote. This module
goes back to the user's own files and finds the entries that exclude the operation's kernels: a
``kernel_denies`` glob matching them, a ``kernel_allows`` list matching none of them, a strict lock.
"""

from __future__ import annotations

import os
from fnmatch import fnmatchcase
from typing import Any, Iterator

from layerzero_vllm.errors import PluginConfigError


def _walk(node: Any, path: str) -> Iterator[tuple[str, Any]]:
    """Every (field path, value) in a parsed YAML document."""
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}[{i}]")


def offending_fields(path: str, operation: str, kernel_ids: list[str]) -> list[str]:
    """``field = value`` strings of ``path`` (a policy or rules YAML) that exclude ``kernel_ids``."""
    import yaml

    try:
        with open(path) as fh:
            data = yaml.safe_load(fh.read())
    except (OSError, yaml.YAMLError):
        return []
    found = []
    for field, value in _walk(data, ""):
        leaf = field.rsplit(".", 1)[-1]
        if leaf == "kernel_denies" and isinstance(value, list):
            for i, glob in enumerate(value):
                if isinstance(glob, str) and any(fnmatchcase(k, glob) for k in kernel_ids):
                    found.append(f"{field}[{i}] = {glob!r}")
        elif leaf == "kernel_allows" and isinstance(value, list) and value:
            if not any(isinstance(g, str) and fnmatchcase(k, g) for g in value for k in kernel_ids):
                found.append(f"{field} = {value!r} (admits no {operation} kernel)")
        elif leaf in ("kernel_locks", "kernels") and isinstance(value, dict):
            for key, kernel in value.items():
                if isinstance(key, str) and fnmatchcase(operation, key):
                    found.append(f"{field}.{key} = {kernel!r}")
        elif leaf == "lock_mode" and value == "strict":
            found.append(f"{field} = 'strict'")
    return found


def user_files() -> list[tuple[str, str]]:
    """``(variable, path)`` of the configuration files the user named."""
    files = []
    for variable in ("LAYERZERO_POLICY", "LAYERZERO_RULES", "LAYERZERO_HF_RULES"):
        path = os.environ.get(variable)
        if path and (variable != "LAYERZERO_HF_RULES" or not os.environ.get("LAYERZERO_RULES")):
            files.append((variable, path))
    return files


def no_kernel_error(operation: str, where: str, exc: Exception) -> PluginConfigError:
    """The PluginConfigError for ``operation`` having no runnable kernel (``where``: the layer and shape)."""
    from layerzero.registry import get_global_kernel_registry

    kernel_ids = sorted(spec.kernel_id for spec in get_global_kernel_registry().get_by_operation(operation))
    lines = [f"LayerZero vLLM plugin: no kernel can run {operation} for {where} under the active policy."]
    named = False
    for variable, path in user_files():
        fields = offending_fields(path, operation, kernel_ids)
        if fields:
            named = True
            lines.append(f"{variable}={path!r} excludes them at: " + "; ".join(fields) + ".")
    if not named:
        files = ", ".join(f"{v}={p!r}" for v, p in user_files()) or "no user policy or rules file"
        lines.append(f"Configuration in effect: {files}.")
    lines.append(f"Kernels of {operation}: {', '.join(kernel_ids)} (vLLM's own op is the vllm_* one). "
                 "Fix: remove or narrow that entry so at least one of them can run, or unset LAYERZERO_VLLM "
                 "to run vLLM without the plugin.")
    lines.append(f"Details: {exc}")
    return PluginConfigError("\n".join(lines))
