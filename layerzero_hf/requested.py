"""Which kernel will actually serve each operation a patch requested (through the rules, the A/B arm or
``kernels=``), checked against the model's device and dtype before anything is bound.

A comparison "with Liger" must not measure torch twice without saying so: a request that cannot run here
is reported (``PatchReport.kernels`` shows what serves instead, ``notes`` says why), warned about, or under
``strict`` refused.
"""

from __future__ import annotations

import torch
from torch import nn

from layerzero.operations import expand
from layerzero_hf.loading import ModelSetup

__all__ = ["requested_kernels"]


def requested_kernels(model: nn.Module, setup: ModelSetup, warn: bool = True
                      ) -> tuple[dict[str, str], dict[str, str]]:
    """For each kernel the rules, arm or ``kernels=`` request: the kernel that will serve the operation on
    this model's device and dtype, and for requests that cannot run, why and what runs instead (also a
    warning: a comparison "with Liger" must not measure torch twice without saying so)."""
    import warnings

    from layerzero.context import SelectionContext

    orch = setup.orchestrator
    served: dict[str, str] = {}
    unavailable: dict[str, str] = {}
    param = next(iter(model.parameters()), None)
    device = str(param.device) if param is not None else "cpu"
    dtype = param.dtype if param is not None else torch.float32
    for op, kid in setup.resolution.kernels.items():
        for operation in expand(op) or (op,):
            try:
                spec = orch.kernel_registry.get(kid)
            except Exception as exc:  # noqa: BLE001 - an unknown id: the rules validator names it too
                unavailable[operation] = f"{kid}: {exc}"
                continue
            ctx = SelectionContext(operation=operation, device=device, dtype=dtype)
            reasons = spec.check(ctx, orch.backend_registry)
            if not reasons:
                served[operation] = spec.kernel_id
                continue
            try:
                instead = orch.explain(operation, ctx).chosen or "no kernel"
            except Exception:  # noqa: BLE001
                instead = "the dispatcher's choice"
            served[operation] = instead
            unavailable[operation] = f"{kid} ({'; '.join(reasons)}); {instead} serves {operation} instead"
    for op, why in unavailable.items() if warn else ():
        warnings.warn(f"layerzero_hf.patch: requested kernel for {op} cannot run: {why}", RuntimeWarning,
                      stacklevel=3)
    return served, unavailable
