"""The :class:`Operation` base class: everything LayerZero knows about one operation, in one object.

Why one object: the facts of an operation (its argument names, which inputs are valid, which facts decide
the kernel, the cache key, the shape of a correct output, the fp32 oracle, sample inputs and the
``torch.library`` schema used under ``torch.compile``) change together. Keeping them on one object lets
generic code (validation, selection contexts, cache keys, the dispatcher's output check, tuning tools,
the CLI) loop over operations instead of branching on names, and makes adding an operation one module.

Foundation floor: torch and :mod:`layerzero.errors` only.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Mapping, NamedTuple, Sequence, TypeVar

import torch

Problem = tuple[str, Any, str]  # (argument, value, message with the fix)
Keyer = Callable[[str, Mapping[str, Any], Mapping[str, Any]], Hashable]
OutputSpec = tuple[tuple[int, ...], torch.dtype]  # (shape, dtype) of one output tensor

FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
grad_enabled = torch.is_grad_enabled


@dataclass(frozen=True)
class OperationContract:
    """The argument names an operation's kernels accept: tensors first, then options."""

    name: str
    inputs: tuple[str, ...]
    options: tuple[str, ...]

    @property
    def parameters(self) -> frozenset[str]:
        return frozenset(self.inputs + self.options)


# NamedTuples built from real types (not string annotations), so their generated ``__new__`` documents
# cleanly; keyers unpack them as tuples on the hot path.
SizeBucket = NamedTuple("SizeBucket", [("memo", dict), ("fill", Callable[[int], int])])
SizeBucket.__doc__ = """A bucketer with its memo: keyers read a hit inline (``memo.get(n) or fill(n)``; buckets are
>= 1) and pay the extra Python call only on a miss."""

KeyBuckets = NamedTuple("KeyBuckets", [("batch", SizeBucket), ("seq_q", SizeBucket), ("seq_k", SizeBucket)])
KeyBuckets.__doc__ = """The size buckets a cache key may use: batch (or token rows), query and key sequence lengths."""


class Operation:
    """One operation. Subclasses fill in the per-operation knowledge; the defaults suit an operation whose
    inputs are plain tensors.

    ``family`` groups operations that share kernels, tolerances and a custom op (the four attention
    operations); ``optional_inputs`` are contract inputs that may be None; ``tensor_options`` are options
    that are tensors when given (masks, sinks, residuals) and are type-checked like inputs."""

    family: str = ""
    optional_inputs: frozenset[str] = frozenset()
    tensor_options: tuple[str, ...] = ()
    tolerance_class: str = "default"  # key into layerzero.validation.TOLERANCES
    # Default tuning shapes (TuneShape fields besides operation and dtype): tiny on CPU, representative on
    # CUDA (Llama-8B sizes). Row-wise operations use tokens x hidden.
    cpu_shapes: tuple[dict[str, int], ...] = ({"tokens": 256, "hidden": 1024},)
    cuda_shapes: tuple[dict[str, int], ...] = ({"tokens": 4096, "hidden": 4096},)

    def __init__(self, contract: OperationContract, reference_function: Callable[..., Any] | None = None):
        self.contract = contract
        self.name = contract.name
        if not self.family:
            self.family = contract.name
        self.reference_function = reference_function
        self._signature: inspect.Signature | None = None
        if reference_function is not None:
            names = tuple(inspect.signature(reference_function).parameters)
            if names != contract.inputs + contract.options:
                raise TypeError(f"operation {contract.name!r}: the reference {reference_function.__name__} takes "
                                f"{names}, the contract names {contract.inputs + contract.options}")

    @property
    def signature(self) -> inspect.Signature:
        """The operation's one signature (names, order, defaults, types): the reference's. Kernel adapters
        get it through :func:`implements` instead of restating it."""
        if self._signature is None:
            if self.reference_function is None:
                raise TypeError(f"operation {self.name!r} has no reference function, so no signature")
            self._signature = inspect.signature(self.reference_function, eval_str=True)
        return self._signature

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    # ------------------------------------------------------------------ validation
    def check_inputs(self, args: Mapping[str, Any], found: list[Problem]) -> None:
        """Append the shape/option problems of a call whose tensors are present and usable."""

    # ------------------------------------------------------------------ selection facts and cache key
    def selection_facts(self, inputs: Mapping[str, Any], kwargs: Mapping[str, Any], values: dict[str, Any]) -> None:
        """Add this operation's :class:`~layerzero.context.SelectionContext` fields (metadata only)."""

    def described_facts(self, d: Mapping[str, Any]) -> dict[str, Any]:
        """Selection-context fields of a call described by sizes rather than tensors (``explain``,
        ``doctor``): ``batch``, ``seq_q``, ``seq_k``, ``heads``, ``kv_heads``, ``head_dim``, ``tokens``,
        ``hidden`` and the operation's options."""
        tokens = d.get("tokens")
        return {"batch_size": tokens if tokens is not None else d.get("batch"), "hidden_size": d.get("hidden")}

    def keyer(self, buckets: KeyBuckets) -> Keyer | None:
        """A cheap cache-key function for calls of this operation, or None for the generic key."""
        return None

    # ------------------------------------------------------------------ outputs and reference
    def expected_outputs(self, inputs: Mapping[str, Any], count: int) -> list[OutputSpec]:
        """(shape, dtype) of every output a correct kernel returns; empty when unknown."""
        return []

    def reference(self, **arguments: Any) -> Any:
        """The fp32 reference (the conformance oracle and last-resort kernel)."""
        if self.reference_function is None:
            raise NotImplementedError(f"{self.name} has no reference implementation")
        return self.reference_function(**arguments)

    def error_scales(self, arguments: Mapping[str, Any]) -> list[torch.Tensor] | None:
        """Per output, the fp32 magnitude that a correct half-precision kernel's rounding error scales with
        (the relative tolerance multiplies it), or None: the reference output's own magnitude. An operation
        whose result is a difference of rounded terms (RoPE) returns the terms' magnitude, since where they
        cancel a correct kernel's error is a fraction of the terms, not of the small result."""
        return None

    def defined_rows(self, arguments: Mapping[str, Any]) -> torch.Tensor | None:
        """A bool mask, broadcastable to the first output, of the elements the contract defines; None when
        all are. Comparisons with the reference skip the rest (attention: rows that see no key)."""
        return None

    def call_defaults(self) -> dict[str, Any]:
        """Options a measured call states explicitly (attention: whether it is causal)."""
        return {}

    # ------------------------------------------------------------------ sample calls (tests, tuning)
    def sample_inputs(self, shape: Any, device: torch.device, dtype: torch.dtype) -> tuple[dict[str, Any], dict[str, Any]]:
        """Random inputs for a tuning shape (``batch``, ``seq_q``, ``seq_k``, ``heads``, ``kv_heads``,
        ``head_dim``, ``tokens``, ``hidden``) and the call's options."""
        raise ValueError(f"operation: cannot build inputs for {self.name!r}")

    def default_shapes(self, cuda: bool) -> tuple[dict[str, int], ...]:
        """The sizes ``bench``/``tune``/``doctor`` try when given no shapes (see ``cpu_shapes``)."""
        return self.cuda_shapes if cuda else self.cpu_shapes

    def shape_label(self, shape: Any) -> str:
        """Compact description of a tuning shape (``bench``/``tune`` output keys)."""
        return rows_label(shape)

    def describe_inputs(self, inputs: Mapping[str, Any]) -> list[str]:
        """Short descriptions of a call's main tensors (the ``shape`` column of ``bench``)."""
        return describe_first_tensor(inputs)


def rows_label(shape: Any) -> str:
    """Label of a row-wise tuning shape: tokens x hidden (also used for operations without their own)."""
    return f"{shape.operation} t{shape.tokens} h{shape.hidden} {shape.dtype}"


def describe_first_tensor(inputs: Mapping[str, Any]) -> list[str]:
    """Description of a call by its first tensor (also used for operations without their own)."""
    first = next(((k, v) for k, v in inputs.items() if isinstance(v, torch.Tensor)), None)
    return [f"{first[0]} {fmt_dims(first[1])}"] if first else []


def randn(device: torch.device, dtype: torch.dtype) -> Callable[..., torch.Tensor]:
    """A ``randn(*sizes)`` on one device and dtype, for sample inputs."""
    return lambda *sizes: torch.randn(*sizes, device=device, dtype=dtype)


def fmt_dims(t: torch.Tensor) -> str:
    return "x".join(str(d) for d in t.shape)


def row_facts(t: torch.Tensor | None, values: dict[str, Any]) -> None:
    """Selection facts of a row-wise operation on a (..., hidden) tensor."""
    if t is not None:
        values["hidden_size"] = t.shape[-1]
        values["batch_size"] = t.numel() // max(1, t.shape[-1])
        values["is_contiguous"] = t.is_contiguous()


def bool_option(a: Mapping[str, Any], name: str, found: list[Problem]) -> None:
    value = a.get(name)
    if value is not None and not isinstance(value, bool):
        found.append((name, value, "expected True or False"))


def positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def same_as(t: torch.Tensor, count: int = 1) -> list[OutputSpec]:
    """``count`` outputs with the shape and dtype of ``t``."""
    return [(tuple(t.shape), t.dtype)] * count


def check_against(expected: Sequence[OutputSpec], out: Any) -> str | None:
    """Why ``out`` does not match ``expected`` (count, type, shape, dtype, NaN/Inf), or None."""
    tensors = out if isinstance(out, tuple) else (out,)
    if expected and len(tensors) != len(expected):
        return f"returned {len(tensors)} tensors, expected {len(expected)}"
    for i, t in enumerate(tensors):
        if not isinstance(t, torch.Tensor):
            return f"output {i} is {type(t).__name__}, not a tensor"
        if expected:
            shape, dtype = expected[i]
            if tuple(t.shape) != shape:
                return f"output {i} has shape {tuple(t.shape)}, expected {shape}"
            if t.dtype != dtype:
                return f"output {i} has dtype {t.dtype}, expected {dtype}"
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return f"output {i} contains NaN or Inf"
    return None


KernelFunction = TypeVar("KernelFunction", bound=Callable[..., Any])
_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def implements(operation: Operation) -> Callable[[KernelFunction], KernelFunction]:
    """Decorator for a kernel adapter: it lists the operation's parameter names once, in the contract's
    order and without defaults or types, and gets both from the operation's reference.

    Why: every kernel of an operation must accept exactly the contract (the dispatcher calls them
    interchangeably), so restating the signature in each adapter only adds places where a default can
    drift (one kernel defaulting ``casting`` to ``"gemma"`` where the contract says ``"llama"``). A
    mismatch in names or order, or a restated default, raises ``TypeError`` at import. Keyword-only
    parameters after ``*`` (private launch knobs such as ``_config``) keep their own defaults."""

    def adapt(fn: KernelFunction) -> KernelFunction:
        canonical = operation.signature
        params = list(inspect.signature(fn).parameters.values())
        positional = [p for p in params if p.kind in _POSITIONAL]
        where = f"{fn.__module__}.{fn.__qualname__}"
        if [p.name for p in positional] != list(canonical.parameters):
            raise TypeError(f"{where} implements {operation.name!r}, whose parameters are "
                            f"{tuple(canonical.parameters)}; it takes {tuple(p.name for p in positional)}")
        restated = [p.name for p in positional if p.default is not p.empty]
        if restated:
            raise TypeError(f"{where} restates defaults for {restated}: list the names only, the defaults come "
                            f"from {operation.name!r}'s reference")
        if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
            raise TypeError(f"{where}: *args is not allowed in a kernel adapter")
        fn.__defaults__ = tuple(p.default for p in canonical.parameters.values() if p.default is not p.empty)
        extras = [p for p in params if p.kind not in _POSITIONAL]
        fn.__signature__ = canonical.replace(  # type: ignore[attr-defined]
            parameters=[*canonical.parameters.values(), *extras])
        annotations = {n: p.annotation for n, p in canonical.parameters.items() if p.annotation is not p.empty}
        if canonical.return_annotation is not canonical.empty:
            annotations["return"] = canonical.return_annotation
        fn.__annotations__ = {**annotations, **{k: v for k, v in fn.__annotations__.items() if k not in annotations}}
        return fn

    return adapt
