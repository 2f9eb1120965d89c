"""LayerZero's own Triton kernels (rms_norm, rope, swiglu/geglu, decode and prefill attention).

Importing this package does not import triton; the kernel modules (``rms_norm``, ``rope``, ``swiglu``,
``decode_attention``, ``prefill_attention``) do,
and they are loaded lazily through the catalogue's ``impl`` paths. ``specs.triton_kernels()`` describes them.
"""

from layerzero.kernels.triton.specs import triton_kernels

__all__ = ["triton_kernels"]
