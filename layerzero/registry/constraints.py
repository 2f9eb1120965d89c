"""What a kernel can and cannot do, as data, with human-readable reasons for every rejection.

The same reasons power selection, ``explain()``, ``NoKernelAvailableError`` and the CLI, so each one names
the fact and the limit ("head_dim 320 > 256", "dtype float32 not in {bfloat16, float16}").

A limit that depends on the installed build of the kernel's library (a feature added in some version) is a
custom check marked with :func:`needs_backend_status`: it is handed the backend's probed status by whoever
knows the backends (``KernelSpec.check``), instead of reading a global registry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable

if TYPE_CHECKING:
    from layerzero.context.call_context import SelectionContext
    from layerzero.registry.backends import BackendStatus

CustomCheck = Callable[["SelectionContext"], "str | None"]
BackendCheck = Callable[["SelectionContext", "BackendStatus"], "str | None"]


def needs_backend_status(check: BackendCheck) -> BackendCheck:
    """Mark a custom check as ``check(ctx, status)``: it judges the installed build of the kernel's backend
    (e.g. its version). Run only when the caller passes that status; without it the check is skipped."""
    check.needs_backend_status = True  # type: ignore[attr-defined]
    return check


def _fmt(values: Iterable) -> str:
    return "{" + ", ".join(str(v) for v in sorted(values, key=str)) + "}"


@dataclass(frozen=True)
class KernelConstraints:
    """Limits of one kernel. ``None`` means "no limit"; booleans say whether a feature is supported."""

    platforms: frozenset[str] | None = None
    dtypes: frozenset[str] | None = None
    min_compute_capability: tuple[int, int] | None = None
    max_compute_capability: tuple[int, int] | None = None
    head_dims: frozenset[int] | None = None
    min_head_dim: int | None = None
    max_head_dim: int | None = None
    head_dim_multiple: int | None = None
    max_seq_len: int | None = None
    min_hidden_size: int | None = None
    max_hidden_size: int | None = None
    supports_gqa: bool = True
    supports_causal: bool = True
    supports_non_causal: bool = True
    supports_bottom_right_causal: bool = True
    supports_bool_mask: bool = True
    supports_additive_mask: bool = True
    supports_mask_with_causal: bool = True
    supports_dropout: bool = True
    supports_softcap: bool = False
    supports_sliding_window: bool = False
    supports_sinks: bool = False
    supports_different_v_dim: bool = True
    requires_contiguous: bool = False
    supports_grad: bool = True
    supports_compile: bool = True
    supports_norm_offset: bool = True
    casting_modes: frozenset[str] | None = None
    supports_fused_residual: bool = True
    supports_partial_rotary: bool = True
    supports_interleaved: bool = True
    layouts: frozenset[str] | None = None
    custom: tuple[CustomCheck | BackendCheck, ...] = field(default=())

    def check(self, ctx: "SelectionContext", backend: "BackendStatus | None" = None) -> list[str]:
        """Every reason this kernel cannot run ``ctx``; empty when it can. ``backend``, the probed status of
        the kernel's backend, feeds the checks marked :func:`needs_backend_status`."""
        r: list[str] = []
        if self.platforms is not None and ctx.platform is not None and ctx.platform not in self.platforms:
            r.append(f"device {ctx.platform} not supported (needs {_fmt(self.platforms)})")
        if self.dtypes is not None and ctx.dtype is not None and ctx.dtype not in self.dtypes:
            r.append(f"dtype {ctx.dtype} not in {_fmt(self.dtypes)}")
        cc = ctx.compute_capability
        if cc is not None:
            if self.min_compute_capability and tuple(cc) < self.min_compute_capability:
                r.append(f"compute capability {cc[0]}.{cc[1]} < {self._cc(self.min_compute_capability)}")
            if self.max_compute_capability and tuple(cc) > self.max_compute_capability:
                r.append(f"compute capability {cc[0]}.{cc[1]} > {self._cc(self.max_compute_capability)}")
        self._check_head_dim(ctx.head_dim, "head_dim", r)
        if ctx.head_dim_v is not None and ctx.head_dim_v != ctx.head_dim:
            if not self.supports_different_v_dim:
                r.append(f"value head_dim {ctx.head_dim_v} != query head_dim {ctx.head_dim} not supported")
            else:
                self._check_head_dim(ctx.head_dim_v, "value head_dim", r)
        if self.max_seq_len is not None:
            for name in ("seq_len_q", "seq_len_k"):
                n = getattr(ctx, name)
                if n is not None and n > self.max_seq_len:
                    r.append(f"{name} {n} > {self.max_seq_len}")
        if ctx.hidden_size is not None:
            if self.min_hidden_size is not None and ctx.hidden_size < self.min_hidden_size:
                r.append(f"hidden size {ctx.hidden_size} < {self.min_hidden_size}")
            if self.max_hidden_size is not None and ctx.hidden_size > self.max_hidden_size:
                r.append(f"hidden size {ctx.hidden_size} > {self.max_hidden_size}")
        if ctx.enable_gqa and not self.supports_gqa:
            r.append(f"grouped-query attention ({ctx.num_heads} query / {ctx.num_kv_heads} kv heads) not supported")
        if ctx.is_causal:
            if not self.supports_causal:
                r.append("causal attention not supported")
            elif (
                not self.supports_bottom_right_causal
                and ctx.seq_len_q is not None
                and ctx.seq_len_k is not None
                and ctx.seq_len_q != ctx.seq_len_k
                and ctx.seq_len_q > 1
            ):
                r.append(f"bottom-right causal with seq_len_q {ctx.seq_len_q} != seq_len_k {ctx.seq_len_k} not supported")
        elif ctx.operation is not None and ctx.operation.startswith("attention") and not self.supports_non_causal:
            r.append("non-causal attention not supported")
        if ctx.attn_mask == "bool" and not self.supports_bool_mask:
            r.append("boolean attention mask not supported")
        if ctx.attn_mask == "additive" and not self.supports_additive_mask:
            r.append("additive (float) attention mask not supported")
        if ctx.attn_mask and ctx.is_causal and not self.supports_mask_with_causal:
            r.append("attention mask combined with is_causal not supported")
        if ctx.dropout_p and not self.supports_dropout:
            r.append(f"dropout_p {ctx.dropout_p} not supported")
        if ctx.softcap and not self.supports_softcap:
            r.append(f"softcap {ctx.softcap} not supported")
        if ctx.sliding_window is not None and not self.supports_sliding_window:
            r.append(f"sliding_window {ctx.sliding_window} not supported")
        if ctx.has_sinks and not self.supports_sinks:
            r.append("attention sinks (s_aux) not supported")
        if self.requires_contiguous and not ctx.is_contiguous:
            r.append("non-contiguous input not supported")
        if ctx.requires_grad and not self.supports_grad:
            r.append("autograd (requires_grad) not supported")
        if ctx.is_compiling and not self.supports_compile:
            r.append("not traceable by torch.compile")
        if ctx.norm_offset and not self.supports_norm_offset:
            r.append(f"norm weight offset {ctx.norm_offset} not supported")
        if self.casting_modes is not None and ctx.casting is not None and ctx.casting not in self.casting_modes:
            r.append(f"casting mode {ctx.casting} not in {_fmt(self.casting_modes)}")
        if ctx.fused_residual and not self.supports_fused_residual:
            r.append("fused residual add not supported")
        if (
            ctx.rotary_dim is not None
            and ctx.head_dim is not None
            and ctx.rotary_dim < ctx.head_dim
            and not self.supports_partial_rotary
        ):
            r.append(f"partial rotary (rotary_dim {ctx.rotary_dim} < head_dim {ctx.head_dim}) not supported")
        if ctx.interleaved and not self.supports_interleaved:
            r.append("interleaved rotary not supported")
        if self.layouts is not None and ctx.layout is not None and ctx.layout not in self.layouts:
            r.append(f"layout {ctx.layout} not in {_fmt(self.layouts)}")
        for check in self.custom:
            if getattr(check, "needs_backend_status", False) is True:
                reason = check(ctx, backend) if backend is not None else None  # type: ignore[call-arg]
            else:
                reason = check(ctx)  # type: ignore[call-arg]
            if reason:
                r.append(reason)
        return r

    def _check_head_dim(self, d: int | None, name: str, r: list[str]) -> None:
        if d is None:
            return
        if self.head_dims is not None and d not in self.head_dims:
            r.append(f"{name} {d} not in {_fmt(self.head_dims)}")
        if self.min_head_dim is not None and d < self.min_head_dim:
            r.append(f"{name} {d} < {self.min_head_dim}")
        if self.max_head_dim is not None and d > self.max_head_dim:
            r.append(f"{name} {d} > {self.max_head_dim}")
        if self.head_dim_multiple is not None and d % self.head_dim_multiple:
            r.append(f"{name} {d} not a multiple of {self.head_dim_multiple}")

    @staticmethod
    def _cc(cc: tuple[int, int]) -> str:
        return f"{cc[0]}.{cc[1]}"

    def describe(self) -> dict[str, object]:
        """The limits that differ from "anything goes", for tables and the CLI."""
        out: dict[str, object] = {}
        default = KernelConstraints()
        for name in self.__dataclass_fields__:
            if name == "custom":
                continue
            value = getattr(self, name)
            if value != getattr(default, name):
                out[name] = sorted(value, key=str) if isinstance(value, frozenset) else value
        if self.custom:
            out["custom"] = [getattr(c, "__doc__", None) or getattr(c, "__name__", "check") for c in self.custom]
        return out
