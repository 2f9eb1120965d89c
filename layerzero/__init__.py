"""LayerZero: the fastest correct kernel for every attention, norm, RoPE and activation call.

Importing this package imports no optional backend (flash-attn, FlashInfer, xFormers, Liger, Triton);
backends are probed on first use. Sub-packages: ``registry``, ``selection``, ``policy``, ``dispatch``,
``kernels``, ``telemetry``, ``ops`` (the functional API patched models call).
"""

from __future__ import annotations

__version__ = "0.1.0"

import logging as _logging  # noqa: E402

from layerzero.errors import LayerZeroError  # noqa: E402

# A library leaves handler choice to the application; this keeps warnings from printing via lastResort.
_logging.getLogger("layerzero").addHandler(_logging.NullHandler())



def __getattr__(name: str):
    # ``layerzero.use_kernels`` without importing the dispatcher at ``import layerzero`` time
    if name == "use_kernels":
        from layerzero.dispatch.overrides import use_kernels

        return use_kernels
    raise AttributeError(f"module 'layerzero' has no attribute {name!r}")


__all__ = ["LayerZeroError", "__version__"]  # use_kernels is documented in layerzero.dispatch
