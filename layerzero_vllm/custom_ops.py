"""Out-of-tree replacements for vLLM's RMSNorm, SiluAndMul and rotary-embedding custom ops.

vLLM builds every ``CustomOp`` through ``CustomOp.__new__``, which looks the *class name* up in
``op_registry_oot`` and instantiates the registered subclass instead. Each class here subclasses the vLLM
class it replaces, so parameters, buffers, ``weight_loader``s and state-dict keys stay exactly vLLM's.

None of vLLM's forward methods is overridden: ``CustomOp.__init__`` binds the method vLLM would bind
without the plugin (``forward_cpu``/``forward_cuda``/... when the op is enabled in ``custom_ops``,
``forward_native`` when it is disabled, as in vLLM's compiled mode). The layer then asks its model's
policy which kernel it runs (:mod:`layerzero_vllm.planning`). By default that is vLLM's own kernel
(:mod:`layerzero_vllm.exact`), and the binding stays as vLLM made it: no per-call cost, vLLM's rounding.
Only when the policy chooses LayerZero kernels does the layer's ``_forward_method`` become ``_lz_forward``
(for an enabled op, or for a disabled one with ``LAYERZERO_VLLM_NATIVE=layerzero``, where under
``torch.compile`` LayerZero's ops are opaque ``layerzero::*`` custom ops).

Both spellings enable or disable an op: the class name (``+RMSNorm``, the name vLLM gives an out-of-tree
op) and vLLM's registered op name (``+rms_norm``), so existing ``custom_ops`` lists keep working.

Shapes where LayerZero's contract does not apply (RMSNorm over a sub-range, ``variance_size_override``;
rotary positions that are not one per token) go to vLLM's own implementation, never to a guess.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

logger = logging.getLogger("vllm.plugins.layerzero")

_STATE: dict[str, Any] = {"native_layerzero": False}
_INSTANCES: dict[str, int] = {}  # LayerZero class name -> instances built in this process (telemetry)

# vLLM RotaryEmbedding subclasses whose forward is the base class's cos/sin-cache lookup (they only
# change how the cache is computed), so LayerZero's rope contract covers them exactly. Classes that
# override a forward method (MRoPE, Deepseek, Fourier, dual-chunk, Phi-3 long-rope...) are left to vLLM.
ROPE_CLASS_NAMES = (
    "RotaryEmbedding",
    "LinearScalingRotaryEmbedding",
    "DynamicNTKScalingRotaryEmbedding",
    "DynamicNTKAlphaRotaryEmbedding",
    "NTKScalingRotaryEmbedding",
    "YaRNScalingRotaryEmbedding",
    "Llama3RotaryEmbedding",
    "Gemma4RotaryEmbedding",
)
_FORWARD_METHODS = ("forward", "forward_native", "forward_static", "forward_cuda", "forward_cpu", "forward_xpu",
                    "forward_hip", "get_cos_sin", "_match_cos_sin_cache_dtype")


def instances() -> dict[str, int]:
    """How many layers of each LayerZero class this process built (which vLLM classes a model used)."""
    return dict(_INSTANCES)


def set_native_layerzero(enabled: bool) -> None:
    """Whether ``forward_native`` dispatches through LayerZero (see the module docstring)."""
    _STATE["native_layerzero"] = bool(enabled)


def keep_dispatch_in_compiled_graphs() -> None:
    """Set LayerZero's compile strategy to ``"opaque"`` for this process. A vLLM layer runs LayerZero only
    when its policy chose a LayerZero kernel; in vLLM's compiled graphs that choice must still dispatch,
    which the default ``"inline"`` strategy would trace away into plain torch (vLLM's own fusion passes
    already see vLLM's ``forward_native`` wherever the plugin is not chosen)."""
    _lz_ops().set_compile_strategy("opaque")


def native_layerzero() -> bool:
    return _STATE["native_layerzero"]


def _lz_ops() -> Any:
    import layerzero.ops as ops

    return ops


class _LayerZeroOp:
    """Mixin: keeps vLLM's own forward unless the policy chose other kernels for this layer.

    The class overrides none of vLLM's forward methods, so ``CustomOp.__init__`` binds exactly the method
    vLLM would bind without the plugin. Then :func:`layerzero_vllm.planning.plan_layer` asks the policy:
    if vLLM's own kernel wins at every probe size the binding is left alone (no per-call cost); otherwise
    ``_forward_method`` becomes ``_lz_forward`` when vLLM enabled the op (or ``LAYERZERO_VLLM_NATIVE=
    layerzero`` asks for the native path too)."""

    _vllm_op_name: str = ""  # vLLM's registered name ("rms_norm"), accepted as an alias in custom_ops
    _lz_operation: str = ""  # LayerZero's operation
    _lz_fused: bool = False  # whether the op has a fused-residual form to probe
    _lz_orchestrator: str | None = None  # registered per-model orchestrator (None: the global one)
    _lz_plan: Any = None
    _vllm_class: str = ""  # the vLLM class this one replaces (set at registration)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        from layerzero_vllm.model_setup import orchestrator_for_current_model

        self._lz_orchestrator = orchestrator_for_current_model()
        name = type(self).__name__
        _INSTANCES[name] = _INSTANCES.get(name, 0) + 1
        self._lz_bind()

    def _lz_bind(self) -> None:
        from layerzero_vllm import planning

        vllm_class = self._vllm_class
        outside = self._lz_outside_contract()
        plan = planning.plan_layer(self._lz_operation, self._lz_key(), self._lz_probe, self._lz_orchestrator,
                                   f"{vllm_class} {self._lz_key()}", self._lz_fused)
        self._lz_plan = plan
        enabled = bool(getattr(self, "_enforce_enable", False)) or type(self).enabled()
        runs_layerzero = not plan.direct and outside is None and (enabled or _STATE["native_layerzero"])
        if runs_layerzero:
            self._forward_method = self._lz_forward
        if outside is not None:
            note = outside
        elif not enabled and not plan.direct:
            note = (f"custom op {self._vllm_op_name} is disabled by compilation_config.custom_ops, so vLLM's "
                    f"forward_native runs; the policy's choice needs custom_ops '+{self._vllm_op_name}' or "
                    "LAYERZERO_VLLM_NATIVE=layerzero")
        else:
            note = ""
        planning.record(vllm_class, plan, runs_layerzero, note)

    def _lz_outside_contract(self) -> str | None:
        """Why this layer stays vLLM's whatever the policy says (None: LayerZero's contract covers it)."""
        return None

    def _lz_key(self) -> tuple:
        raise NotImplementedError

    def _lz_probe(self, tokens: int, with_residual: bool, device: torch.device) -> tuple[dict, dict]:
        raise NotImplementedError

    @classmethod
    def enabled(cls) -> bool:
        from vllm.model_executor.custom_op import CustomOp, get_cached_compilation_config

        custom_ops = get_cached_compilation_config().custom_ops
        names = {getattr(cls, "name", cls.__name__), cls._vllm_op_name} - {""}
        on = any(f"+{n}" in custom_ops for n in names)
        off = any(f"-{n}" in custom_ops for n in names)
        if on and off:
            raise ValueError(
                f"compilation_config.custom_ops both enables and disables {sorted(names)} "
                f"(custom_ops={custom_ops!r}); remove either the '+' or the '-' entry"
            )
        return (CustomOp.default_on() or on) and not off

    def _lz_forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    def _vllm_native(self, *args: Any, **kwargs: Any) -> Any:
        return super().forward_native(*args, **kwargs)  # type: ignore[misc]


def _empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device=device)


class _RMSNormMixin(_LayerZeroOp):
    """vLLM ``RMSNorm``: normalise in fp32, cast, multiply by the weight = LayerZero casting "llama"."""

    _vllm_op_name = "rms_norm"
    _lz_operation = "rms_norm"
    _lz_fused = True
    _lz_casting = "llama"
    _lz_offset = 0.0

    def _lz_outside_contract(self) -> str | None:
        if getattr(self, "variance_size_override", None) is not None:
            return "RMS over a prefix of the features (var_hidden_size) is not in LayerZero's contract"
        return None

    def _lz_key(self) -> tuple:
        weight = self.weight  # type: ignore[attr-defined]
        return (self._lz_casting, tuple(weight.shape), str(weight.dtype))

    def _lz_probe(self, tokens: int, with_residual: bool, device: torch.device) -> tuple[dict, dict]:
        weight = self.weight  # type: ignore[attr-defined]
        hidden = weight.shape[0]
        x_dtype = weight.dtype  # vLLM builds norm weights in the model's dtype
        options: dict[str, Any] = {"eps": self.variance_epsilon, "offset": self._lz_offset,  # type: ignore[attr-defined]
                                   "casting": self._lz_casting}
        if with_residual:
            options["residual"] = _empty((tokens, hidden), x_dtype, device)
        return {"x": _empty((tokens, hidden), x_dtype, device), "weight": _empty((hidden,), weight.dtype, device)}, options

    def _lz_forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> Any:
        pass_weight = self.pass_weight_add if residual is not None else self.pass_weight  # type: ignore[attr-defined]
        weight = self.weight.data if pass_weight else None  # type: ignore[attr-defined]
        return _lz_ops().rms_norm(x, weight, eps=self.variance_epsilon, casting="llama",  # type: ignore[attr-defined]
                                  residual=residual, orchestrator=self._lz_orchestrator)


class _GemmaRMSNormMixin(_RMSNormMixin):
    """vLLM ``GemmaRMSNorm``: ``(x_norm * (1 + w)).to(dtype)`` in fp32 = casting "gemma", offset 1."""

    _vllm_op_name = "gemma_rms_norm"
    _lz_casting = "gemma"
    _lz_offset = 1.0

    def _lz_outside_contract(self) -> str | None:
        return None

    def _lz_forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> Any:
        return _lz_ops().rms_norm(x, self.weight.data, eps=self.variance_epsilon, offset=1.0,  # type: ignore[attr-defined]
                                  casting="gemma", residual=residual, orchestrator=self._lz_orchestrator)


class _SiluAndMulMixin(_LayerZeroOp):
    """vLLM ``SiluAndMul``: ``x = [gate | up]`` on the last dim -> LayerZero ``swiglu(gate, up)``."""

    _vllm_op_name = "silu_and_mul"
    _lz_operation = "swiglu"

    def _lz_key(self) -> tuple:
        return (str(torch.get_default_dtype()),)

    def _lz_probe(self, tokens: int, with_residual: bool, device: torch.device) -> tuple[dict, dict]:
        dtype = torch.get_default_dtype()
        width = 256  # the contract's facts for swiglu are the dtype and the token count
        return {"gate": _empty((tokens, width), dtype, device), "up": _empty((tokens, width), dtype, device)}, {}

    def _lz_forward(self, x: torch.Tensor) -> torch.Tensor:
        d = x.shape[-1] // 2
        return _lz_ops().swiglu(x[..., :d], x[..., d:], orchestrator=self._lz_orchestrator)


class _RotaryMixin(_LayerZeroOp):
    """vLLM rotary embedding -> LayerZero ``rope`` on ``(1, tokens, heads, head_size)`` views ("bshd").

    vLLM keeps one ``cos_sin_cache`` row per position: ``[cos(r/2) | sin(r/2)]``. LayerZero's contract
    takes cos/sin laid out like the rotated features, so NeoX style (halves) repeats each half and GPT-J
    style (adjacent pairs) interleaves it. ``rotary_dim < head_size`` is partial rotary (pass-through
    features), which the contract covers. Outputs are new tensors; vLLM's callers use the returned
    ``(query, key)``."""

    _vllm_op_name = "rotary_embedding"
    _lz_operation = "rope"

    def _lz_key(self) -> tuple:
        return (self.head_size, self.rotary_dim, bool(self.is_neox_style),  # type: ignore[attr-defined]
                str(torch.get_default_dtype()))

    def _lz_probe(self, tokens: int, with_residual: bool, device: torch.device) -> tuple[dict, dict]:
        dtype = torch.get_default_dtype()
        head, rot = self.head_size, self.rotary_dim  # type: ignore[attr-defined]
        q = _empty((1, tokens, 1, head), dtype, device)
        cos = _empty((1, tokens, rot), dtype, device)
        return {"q": q, "k": q, "cos": cos, "sin": cos}, {"layout": "bshd",
                                                         "interleaved": not self.is_neox_style}  # type: ignore[attr-defined]

    def _lz_forward(
        self, positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        num_tokens = query.shape[0] if query.dim() > 1 else 0
        if positions.numel() != num_tokens:  # e.g. multimodal position ids: not one position per token
            return self._vllm_native(positions, query, key)
        cache = self._match_cos_sin_cache_dtype(query)  # type: ignore[attr-defined]
        cos_sin = cache.index_select(0, positions.flatten())
        cos, sin = cos_sin.chunk(2, dim=-1)
        if self.is_neox_style:  # type: ignore[attr-defined]
            cos, sin = torch.cat((cos, cos), dim=-1), torch.cat((sin, sin), dim=-1)
        else:
            cos, sin = cos.repeat_interleave(2, dim=-1), sin.repeat_interleave(2, dim=-1)
        head = self.head_size  # type: ignore[attr-defined]
        q = query.reshape(1, num_tokens, -1, head)
        k = key.reshape(1, num_tokens, -1, head) if key is not None else q
        q_out, k_out = _lz_ops().rope(q, k, cos.unsqueeze(0), sin.unsqueeze(0), layout="bshd",
                                      interleaved=not self.is_neox_style,  # type: ignore[attr-defined]
                                      orchestrator=self._lz_orchestrator)
        return q_out.reshape(query.shape), (k_out.reshape(key.shape) if key is not None else None)


def _registry() -> dict[str, type]:
    from vllm.model_executor.custom_op import op_registry_oot

    return op_registry_oot


def _register(base: type, mixin: type) -> type | None:
    """Register ``LayerZero<Base>`` for ``base`` unless a class is already registered for that name.

    Returns the class now registered by LayerZero, or None when another plugin owns the name."""
    registry = _registry()
    name = base.__name__
    existing = registry.get(name)
    if existing is not None:
        if getattr(existing, "_layerzero", False):
            return existing  # this process already registered it (idempotent)
        logger.warning("vLLM op %s is already replaced by %s; LayerZero leaves it alone",
                       name, f"{existing.__module__}.{existing.__qualname__}")
        return None
    cls = type(f"LayerZero{name}", (mixin, base), {
        "__module__": __name__,
        "__doc__": f"vLLM ``{name}`` dispatching through LayerZero (see layerzero_vllm.custom_ops).",
        "_layerzero": True,
        "_vllm_class": name,
    })
    base.register_oot(cls, name=name)
    globals()[cls.__name__] = cls  # importable by qualified name (pickling, logs)
    return cls


def _rope_classes() -> list[type]:
    import vllm.model_executor.layers.rotary_embedding as rope_pkg
    from vllm.model_executor.layers.rotary_embedding.base import RotaryEmbedding

    found = []
    for name in ROPE_CLASS_NAMES:
        cls = getattr(rope_pkg, name, None)
        if cls is None:
            for module_name in ("base", "linear_scaling_rope", "dynamic_ntk_scaling_rope",
                                "dynamic_ntk_alpha_rope", "ntk_scaling_rope", "yarn_scaling_rope",
                                "llama3_rope", "gemma4_rope"):
                try:
                    module = __import__(f"{rope_pkg.__name__}.{module_name}", fromlist=[name])
                except ImportError:
                    continue
                cls = getattr(module, name, None)
                if cls is not None:
                    break
        if cls is None or not issubclass(cls, RotaryEmbedding):
            continue
        if cls is not RotaryEmbedding and any(m in vars(cls) for m in _FORWARD_METHODS):
            logger.info("LayerZero skips %s: it overrides vLLM's rotary forward", name)
            continue
        found.append(cls)
    return found


def register_custom_ops() -> dict[str, str]:
    """Register every replacement; returns ``{vLLM class name: LayerZero class name}`` of those active.

    Idempotent: a second call (vLLM loads general plugins once per process, but tests may call it again)
    returns the same mapping without re-registering."""
    from vllm.model_executor.layers.activation import SiluAndMul
    from vllm.model_executor.layers.layernorm import GemmaRMSNorm, RMSNorm

    pairs: list[tuple[type, type]] = [(RMSNorm, _RMSNormMixin), (GemmaRMSNorm, _GemmaRMSNormMixin),
                                      (SiluAndMul, _SiluAndMulMixin)]
    try:  # the Transformers modelling backend swaps HF norms for these (vLLM >= 0.32)
        from vllm.model_executor.models.transformers.fusers.rms_norm import TPAwareGemmaRMSNorm, TPAwareRMSNorm

        pairs += [(TPAwareRMSNorm, _RMSNormMixin), (TPAwareGemmaRMSNorm, _GemmaRMSNormMixin)]
    except ImportError as exc:
        logger.info("vLLM has no TPAwareRMSNorm (%s); the Transformers backend's norms stay vLLM's", exc)
    pairs += [(cls, _RotaryMixin) for cls in _rope_classes()]
    active = {}
    for base, mixin in pairs:
        cls = _register(base, mixin)
        if cls is not None:
            active[base.__name__] = cls.__name__
    return active
