"""What ``layerzero doctor`` reports: the environment and, per backend, installed / version / usable here.

"Installed" is answered without importing the library (``importlib.util.find_spec``), "usable" by the
backend registry's own probe, so the doctor tells exactly what selection will see, including why a
backend is ruled out (not installed, no CUDA device, version too old, Triton without the interpreter).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import sys
from typing import Any

import torch


def _find(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package that fails to import counts as not installed
        return False


def _dist_version(module: str) -> str | None:
    """Version of the distribution that provides the top-level ``module`` (without importing it)."""
    top = module.split(".", 1)[0]
    try:
        dists = importlib.metadata.packages_distributions().get(top, [])
    except Exception:  # noqa: BLE001 - broken metadata: unknown version
        dists = []
    for dist in [*dists, top]:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def backend_rows(backends: Any = None) -> list[dict[str, Any]]:
    """One row per registered backend: installed, version, usable on this machine and why not."""
    if backends is None:
        from layerzero.registry import get_global_backend_registry

        backends = get_global_backend_registry()
    rows = []
    for spec in backends.all():
        installed = all(_find(m) for m in spec.modules) if spec.modules else True
        status = spec.probe()
        version = status.version or (_dist_version(spec.version_module or spec.modules[0]) if installed and
                                     spec.modules else None)
        reason = status.reason
        if not installed:
            # The registry's probe checks cheap conditions (a GPU, TRITON_INTERPRET) before importing, so
            # its reason can name a setting that cannot help while the library is missing: install it first.
            missing = [m for m in spec.modules if not _find(m)]
            hint = spec.install_hint or f"pip install {missing[0].split('.')[0]}"
            reason = f"not installed (module {missing[0]!r} not found); install it: {hint}"
        rows.append({
            "backend": spec.backend_id,
            "installed": installed,
            "version": version,
            "usable": status.available,
            "reason": reason,
            "install": spec.install_hint or None,
            "description": spec.description,
        })
    return rows


def environment() -> dict[str, Any]:
    """Python, torch, CUDA and device facts that decide which kernels can run."""
    import layerzero

    info: dict[str, Any] = {
        "layerzero": layerzero.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "torch_cuda": torch.version.cuda,
        "torch_hip": getattr(torch.version, "hip", None),
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET"),
        "LAYERZERO_POLICY": os.environ.get("LAYERZERO_POLICY"),
        "transformers": _dist_version("transformers") if _find("transformers") else None,
        "devices": [],
    }
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            info["devices"].append({
                "index": i,
                "name": props.name,
                "capability": f"{props.major}.{props.minor}",
                "memory_gib": round(props.total_memory / 2**30, 1),
            })
    try:
        from layerzero.policy import default_policy_path

        path = default_policy_path()
        info["default_policy"] = str(path) if path else None
    except Exception as e:  # noqa: BLE001 - report, do not crash the doctor
        info["default_policy"] = f"error: {e}"
    return info


def default_choices(device: str) -> list[dict[str, Any]]:
    """The kernel the active policy ($LAYERZERO_POLICY, else the shipped default, as ``dispatch()`` uses)
    picks on this machine for each shape of the default grid."""
    from layerzero.tuning.shapes import default_shapes, shape_label
    from layerzero.dispatch.dynamic import DynamicDispatcher
    from layerzero.dispatch.types import DispatchConfig
    from layerzero.policy import default_policy_path

    path = os.environ.get("LAYERZERO_POLICY") or default_policy_path()
    dispatcher = DynamicDispatcher(DispatchConfig(policy_path=str(path) if path else None, enable_telemetry=False))
    out = []
    for shape in default_shapes(device):
        ctx = context_for_shape(shape, device)
        exp = dispatcher.explain(shape.operation, ctx)
        usable = sum(1 for c in exp.candidates if c.status != "rejected")
        out.append({"shape": shape_label(shape), "chosen": exp.chosen, "usable": usable,
                    "candidates": len(exp.candidates)})
    return out


def configuration_problems() -> list[str]:
    """What the user configured that is broken: a ``$LAYERZERO_POLICY`` or ``$LAYERZERO_HF_RULES`` file
    that is missing or invalid. Each item is one line naming the variable, the file and the first problems.
    (Missing optional backends are not problems: they are reported in the backend table.)"""
    from layerzero.errors import ConfigValidationError

    out: list[str] = []
    policy = os.environ.get("LAYERZERO_POLICY")
    if policy:
        from layerzero.policy import load_policy

        try:
            load_policy(policy)
        except ConfigValidationError as e:
            out.append(f"$LAYERZERO_POLICY={policy}: {_first_problems(e)}; run `layerzero validate {policy}`")
        except Exception as e:  # noqa: BLE001 - unreadable file: still a configuration problem
            out.append(f"$LAYERZERO_POLICY={policy}: {type(e).__name__}: {e}")
    rules = os.environ.get("LAYERZERO_HF_RULES")
    if rules and _find("transformers"):
        try:
            from layerzero_hf.rules import load_rules

            load_rules(rules)
        except ConfigValidationError as e:
            out.append(f"$LAYERZERO_HF_RULES={rules}: {_first_problems(e)}; run `layerzero validate {rules}`")
        except Exception as e:  # noqa: BLE001
            out.append(f"$LAYERZERO_HF_RULES={rules}: {type(e).__name__}: {e}")
    return out


def _first_problems(error: Any, limit: int = 3) -> str:
    problems = list(getattr(error, "problems", ()))
    shown = "; ".join(f"{p.field}: {p.message}" for p in problems[:limit])
    more = f" (+{len(problems) - limit} more)" if len(problems) > limit else ""
    return f"{len(problems)} problem(s): {shown}{more}" if problems else str(error)


def context_for_shape(shape: Any, device: str) -> Any:
    """The selection context a call of ``shape`` on ``device`` would have, without allocating tensors."""
    import dataclasses

    from layerzero.context.call_context import SelectionContext, device_capability
    from layerzero.operations import get

    described = dataclasses.asdict(shape)
    described["seq_k"] = shape.seq_k or shape.seq_q
    described["kv_heads"] = shape.kv_heads or shape.heads
    facts = get(shape.operation).described_facts(described)
    return SelectionContext(operation=shape.operation, dtype=shape.dtype, device=device,
                            compute_capability=device_capability(device), **facts)
