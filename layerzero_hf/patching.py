"""Per-instance patching of a Transformers model: norms, RoPE and MLP activations dispatched by LayerZero.

One generic mechanism driven by data (``patches/<arch>.yaml`` or, for unknown architectures, structural
detection plus a numerical self-check). Nothing global is touched:

* norms and MLPs get a forward bound on the instance (``module.forward = MethodType(fn, module)``); the
  parameters, buffers, state-dict keys and ``save_pretrained`` output stay exactly the same;
* RoPE lives in a module-global function (``apply_rotary_pos_emb``) that the attention forward looks up at
  call time. Rewriting that global would change every model of the architecture in the process, so each
  patched attention instance gets a copy of its class forward whose globals resolve the name to this
  model's replacement (same code object, one overlay dict per model); a forward wrapped by ``functools.wraps``
  decorators (Transformers' ``@deprecate_kwarg``) is followed down ``__wrapped__`` and each decorator is
  rebuilt around the copy, so its behaviour is kept;
* every binding is recorded, so :func:`unpatch` deletes exactly the instance attributes it added and the
  class forwards serve again (``'forward' not in module.__dict__``).

Replacements call :mod:`layerzero.ops` with this model's orchestrator name, so under ``torch.compile`` they
become opaque custom ops (no graph breaks) and in eager mode they dispatch per call.
"""

from __future__ import annotations

import contextlib
import itertools
import sys
import types
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import torch
from torch import nn

from layerzero.errors import PatchError
from layerzero.operations import expand
from layerzero_hf import detect
from layerzero_hf.loading import (
    ARM_ATTR,
    ORCHESTRATOR_ATTR,
    SITE_ATTR,
    ModelSetup,
    Owner,
    bind_config,
    build_setup,
    lazy_setup,
    release,
    unbind_config,
)
from layerzero_hf.report import PatchedModule, PatchReport, SkippedModule
from layerzero_hf.specs import KINDS, ArchSpec, PatchSpec, load_arch_spec, parse_arch_spec, spec_for

STATE_ATTR = "_layerzero_state"
SELF_CHECK_MODES = ("unknown", "all", "none")
HOOK_MODES = ("skip", "compose")


def _composable_hook(module: nn.Module) -> bool:
    """An accelerate hook wrapping the class forward: its wrapper calls ``module._old_forward``, so a
    replacement bound there keeps the hook's device placement/offload around our forward."""
    old = module.__dict__.get("_old_forward")
    return (getattr(module, "_hf_hook", None) is not None and old is not None
            and getattr(old, "__func__", None) is type(module).forward and getattr(old, "__self__", None) is module)


@dataclass
class _Binding:
    """One bound replacement: ``slot`` is ``"forward"``, or ``"_old_forward"`` when composed under an
    accelerate hook (whose wrapper calls ``module._old_forward``); ``previous`` is what the slot held."""

    module: nn.Module
    bound: Any
    slot: str = "forward"
    previous: Any = None


@dataclass
class _State:
    key: tuple
    kwargs: dict[str, Any]
    setup: ModelSetup
    report: PatchReport
    model_key: int
    owner: Owner
    bindings: list[_Binding] = field(default_factory=list)
    attr_modules: list[nn.Module] = field(default_factory=list)
    previous_attn: str | None = None
    overlay_modules: list[str] = field(default_factory=list)

    def __reduce__(self) -> tuple:
        """Pickling (``pickle.dumps``, ``torch.save``) saves the model unpatched: the orchestrator (locks,
        caches, breakers) is process state, and the bound forwards pickle as the modules' own. A loaded model
        runs Transformers' norms, RoPE and MLPs; ``patch()`` patches it again."""
        return (_unpatched_on_load, ())

    def __deepcopy__(self, memo: dict) -> "_State":
        """``copy.deepcopy(patched_model)``: the copy is patched too (its forwards were rebound to the copied
        modules by deepcopy) and shares this model's orchestrator, with its own claim on it."""
        import copy

        def mapped(obj: Any) -> Any:
            return memo.get(id(obj), obj)

        setup = self.setup.retain()
        state = _State(self.key, dict(self.kwargs), setup, copy.deepcopy(self.report), 0,
                       Owner(setup), previous_attn=self.previous_attn)
        state.bindings = [_Binding(mapped(b.module), mapped(b.bound), b.slot, mapped(b.previous))
                          for b in self.bindings]
        state.attr_modules = [mapped(m) for m in self.attr_modules]
        new_model = memo.get(self.model_key)
        if new_model is not None:
            state.model_key = id(new_model)
            weakref.finalize(new_model, state.owner.close)
        return state


@dataclass
class _Planned:
    path: str
    module: nn.Module
    fn: Callable
    record: PatchedModule
    slot: str = "forward"


class _Skip(Exception):
    pass


# ---------------------------------------------------------------------------------------------- replacements
# Each replacement owns a CallSite (layerzero.dispatch.callsite): in eager mode it reuses the plan of its
# last call while the call's cache key is unchanged (decode steps), skipping the orchestrator and the cache
# lookup; under torch.compile the custom op carries the orchestrator's name as before.
def _rms_forward(ops: Any, orch: str, eps_attr: str, weight_attr: str, offset: float, casting: str) -> Callable:
    site = ops.call_site(orch)

    def forward(self, hidden_states):
        weight = getattr(self, weight_attr)
        if casting == "llama" and weight is not None and weight.dtype != hidden_states.dtype:
            # Llama-style norms multiply the weight after casting to the input dtype, so a weight kept in
            # another dtype (fp32 weights, bf16 activations) promotes the output, as in Transformers.
            normed = ops.rms_norm(hidden_states, None, eps=getattr(self, eps_attr), casting=casting,
                                  orchestrator=site)
            return (weight + offset) * normed if offset else weight * normed
        return ops.rms_norm(hidden_states, weight, eps=getattr(self, eps_attr), offset=offset,
                            casting=casting, orchestrator=site)

    return forward


def _layer_norm_forward(ops: Any, orch: str, eps_attr: str, weight_attr: str, bias_attr: str) -> Callable:
    site = ops.call_site(orch)

    def forward(self, hidden_states):
        return ops.layer_norm(hidden_states, getattr(self, weight_attr), getattr(self, bias_attr),
                              eps=getattr(self, eps_attr), orchestrator=site)

    return forward


def _mlp_forward(ops: Any, orch: str, params: Mapping[str, Any], op: str, approximate: str) -> Callable:
    site = ops.call_site(orch)
    down = params["down"]
    if params["layout"] == "gate_up_fused":
        gate_up = params["gate_up"]
        if op == "swiglu":
            def forward(self, hidden_states):
                gate, up = getattr(self, gate_up)(hidden_states).chunk(2, dim=-1)
                return getattr(self, down)(ops.swiglu(gate, up, orchestrator=site))
        else:
            def forward(self, hidden_states):
                gate, up = getattr(self, gate_up)(hidden_states).chunk(2, dim=-1)
                return getattr(self, down)(ops.geglu(gate, up, approximate=approximate, orchestrator=site))
        return forward
    gate_name, up_name = params["gate"], params["up"]
    if op == "swiglu":
        def forward(self, hidden_states):
            return getattr(self, down)(
                ops.swiglu(getattr(self, gate_name)(hidden_states), getattr(self, up_name)(hidden_states),
                           orchestrator=site))
    else:
        def forward(self, hidden_states):
            return getattr(self, down)(
                ops.geglu(getattr(self, gate_name)(hidden_states), getattr(self, up_name)(hidden_states),
                          approximate=approximate, orchestrator=site))
    return forward


def _rope_function(ops: Any, orch: str, interleaved: bool, original: Callable, half_tables: bool = False) -> Callable:
    site = ops.call_site(orch)
    widen = _table_widener() if half_tables else None

    def apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1):
        if widen is not None:  # gpt-oss: half-width tables -> HF's full-width cat(freqs, freqs)
            cos, sin = widen(cos, sin)
        # HF passes (B, H, S, D) with unsqueeze_dim=1; unsqueeze_dim=2 means (B, S, H, D).
        if unsqueeze_dim == 1:
            return ops.rope(q, k, cos, sin, layout="bhsd", interleaved=interleaved, orchestrator=site)
        if unsqueeze_dim == 2:
            return ops.rope(q, k, cos, sin, layout="bshd", interleaved=interleaved, orchestrator=site)
        return original(q, k, cos, sin, unsqueeze_dim)

    apply_rotary_pos_emb.__layerzero_original__ = original  # type: ignore[attr-defined]
    return apply_rotary_pos_emb


def _table_widener() -> Callable:
    """cos/sin of half width -> full width. Every layer of one forward gets the same two tensors, so the
    last pair is remembered by identity in eager mode (one concat per forward, not per layer); under
    torch.compile the concat is traced and fused instead."""
    last: list[Any] = [None, None, None, None]

    def widen(cos, sin):
        if torch.compiler.is_compiling():
            return torch.cat((cos, cos), dim=-1), torch.cat((sin, sin), dim=-1)
        if cos is last[0] and sin is last[1]:
            return last[2], last[3]
        wide = torch.cat((cos, cos), dim=-1), torch.cat((sin, sin), dim=-1)
        last[:] = [cos, sin, *wide]
        return wide

    return widen


def _with_global(fn: Callable, name: str, value: Any, overlays: dict[int, types.ModuleType]) -> Callable:
    """A copy of ``fn`` (same code, defaults, closure) whose global ``name`` is ``value``.

    The globals are those of a synthetic module (a snapshot of the defining module's namespace plus the
    override) registered in ``sys.modules`` under a unique name: torch.compile re-imports an inlined
    function's globals by ``__name__`` to build its guards, so the namespace must be importable under its
    own name or the guards would read the original module's function. One synthetic module per model and
    defining module; :func:`unpatch` removes it from ``sys.modules``."""
    overlay = overlays.get(id(fn.__globals__))
    if overlay is None:
        base = str(fn.__globals__.get("__name__", "module")).rpartition(".")[2]
        mod_name = f"_layerzero_overlay_{next(_overlay_ids)}_{base}"
        overlay = types.ModuleType(mod_name)
        overlay.__dict__.update(fn.__globals__)
        overlay.__dict__["__name__"] = mod_name
        overlay.__dict__[name] = value
        sys.modules[mod_name] = overlay
        overlays[id(fn.__globals__)] = overlay
    new = types.FunctionType(fn.__code__, overlay.__dict__, fn.__name__, fn.__defaults__, fn.__closure__)
    new.__kwdefaults__ = dict(fn.__kwdefaults__) if fn.__kwdefaults__ else None
    new.__qualname__ = fn.__qualname__
    new.__module__ = fn.__module__
    new.__doc__ = fn.__doc__
    new.__dict__.update(fn.__dict__)
    new.__layerzero_original__ = fn  # type: ignore[attr-defined]
    return new


_overlay_ids = itertools.count(1)
_MAX_WRAPPERS = 16


def _wrapper_chain(fn: Any, name: str, owner: str) -> tuple[list[types.FunctionType], types.FunctionType]:
    """``(wrappers, target)``: the ``functools.wraps`` decorators above ``fn`` (outermost first) and the
    function whose code looks up the global ``name``.

    Transformers decorates attention forwards (``@deprecate_kwarg`` ...); the wrapper's code is not the
    forward's, so the global has to be found by following ``__wrapped__``. Raises _Skip with the reason
    when no function on the chain looks the name up or a wrapper is not a plain Python function (a
    C-level wrapper or a callable class cannot be rebuilt around a copy, and dropping it would drop the
    decorator's behaviour)."""
    wrappers: list[types.FunctionType] = []
    current = fn
    while True:
        code = getattr(current, "__code__", None)
        if code is not None and name in code.co_names and isinstance(current, types.FunctionType):
            return wrappers, current
        inner = getattr(current, "__wrapped__", None)
        label = _code_label(current)
        if inner is None:
            via = f" (reached through {len(wrappers)} decorator(s))" if wrappers else ""
            raise _Skip(f"{owner}.forward{via}: {label} does not call the global {name!r} directly and wraps "
                        "nothing (a different RoPE path); left alone")
        if not isinstance(current, types.FunctionType):
            raise _Skip(f"{owner}.forward is wrapped by {label} ({type(current).__name__}), not a Python function: "
                        f"it cannot be rebuilt around a per-instance copy calling {name!r}; left alone")
        if len(wrappers) >= _MAX_WRAPPERS or any(w is inner for w in wrappers):
            raise _Skip(f"{owner}.forward: the __wrapped__ chain is cyclic or deeper than {_MAX_WRAPPERS}; left alone")
        wrappers.append(current)
        current = inner


def _code_label(fn: Any) -> str:
    """A decorator's own name: ``functools.wraps`` copies the wrapped function's ``__qualname__`` onto the
    wrapper, so the code object's qualified name is what tells them apart."""
    code = getattr(fn, "__code__", None)
    if code is None:
        return type(fn).__qualname__
    return getattr(code, "co_qualname", code.co_name)


def _cells_holding(wrapper: types.FunctionType, inner: Callable) -> list[int]:
    """Indices of ``wrapper``'s closure cells that hold exactly ``inner``; raises _Skip when there are none
    (the wrapper reaches the wrapped function another way, so a rebuilt wrapper would still call the original)."""
    hits = [i for i, cell in enumerate(wrapper.__closure__ or ()) if _cell_holds(cell, inner)]
    if not hits:
        raise _Skip(f"decorator {_code_label(wrapper)} holds no closure cell with {_code_label(inner)} (it reaches "
                    "the wrapped function another way); cannot rebuild it around a per-instance copy; left alone")
    return hits


def _cell_holds(cell: types.CellType, value: Any) -> bool:
    try:
        return cell.cell_contents is value
    except ValueError:  # an empty cell
        return False


def _rewrap(wrapper: types.FunctionType, cells: list[int], copy: Callable) -> types.FunctionType:
    """A copy of ``wrapper`` (same code, globals, defaults, kwdefaults, ``__dict__``) whose closure ``cells``
    (those that held the wrapped function) hold ``copy``; the other cells are shared, so the decorator's
    state stays one."""
    closure = list(wrapper.__closure__ or ())
    for i in cells:
        closure[i] = types.CellType(copy)
    new = types.FunctionType(wrapper.__code__, wrapper.__globals__, wrapper.__name__, wrapper.__defaults__,
                             tuple(closure))
    new.__kwdefaults__ = dict(wrapper.__kwdefaults__) if wrapper.__kwdefaults__ else None
    new.__qualname__ = wrapper.__qualname__
    new.__module__ = wrapper.__module__
    new.__doc__ = wrapper.__doc__
    new.__dict__.update(wrapper.__dict__)
    new.__wrapped__ = copy  # type: ignore[attr-defined]
    new.__layerzero_original__ = wrapper  # type: ignore[attr-defined]
    return new


def _with_global_through(fn: Callable, name: str, value: Any, overlays: dict[int, types.ModuleType],
                         owner: str) -> tuple[Callable, list[str]]:
    """:func:`_with_global` for a possibly decorated ``fn``: the innermost function that looks ``name`` up is
    copied with the overlay globals, then each decorator above it is rebuilt around the copy. Returns the new
    outermost function and the decorators' qualnames (for the report). Raises _Skip, before any overlay is
    built, when the chain cannot be rebuilt (see :func:`_wrapper_chain` and :func:`_cells_holding`)."""
    wrappers, target = _wrapper_chain(fn, name, owner)
    cells = [_cells_holding(w, inner) for w, inner in zip(wrappers, [*wrappers[1:], target])]
    copy = _with_global(target, name, value, overlays)
    for wrapper, held in zip(reversed(wrappers), reversed(cells)):
        copy = _rewrap(wrapper, held, copy)
    return copy, [_code_label(w) for w in wrappers]


# ---------------------------------------------------------------------------------------------- planning
class _Planner:
    """Decides, module by module, what to bind; runs the self-checks; collects skips with reasons."""

    def __init__(self, model: nn.Module, arch: ArchSpec | None, orch: str, *, detect_mode: bool,
                 self_check: str, kinds: frozenset[str], hooks: str = "skip"):
        from layerzero import ops

        self.ops = ops
        self.model = model
        self.arch = arch
        self.orch = orch
        self.detect_mode = detect_mode
        self.self_check = self_check
        self.kinds = kinds
        self.hooks = hooks
        self.planned: list[_Planned] = []
        self.skipped: list[SkippedModule] = []
        self.attention: list[nn.Module] = []
        self._class_verdict: dict[tuple, tuple[dict, str] | str] = {}  # per (kind, class, params) -> ok|reason
        self._overlays: dict[int, types.ModuleType] = {}
        self._rope_fns: dict[int, Callable] = {}

    def run(self) -> None:
        attention_classes = set(self.arch.attention_classes) if self.arch else set()
        for path, module in self.model.named_modules():
            if module is self.model:
                continue
            if type(module).__name__ in attention_classes or (
                    (self.arch is None or self.detect_mode) and detect.is_attention_module(module)):
                self.attention.append(module)
            spec = self._spec_for(path, module)
            if spec is not None:
                if spec.kind in self.kinds:
                    self._plan(path, module, spec.kind, dict(spec.params), spec.name, verify=self.self_check == "all")
                continue
            if self.detect_mode:
                proposal = detect.propose(path, module)
                if proposal is not None and proposal.kind in self.kinds:
                    self._plan(path, module, proposal.kind, dict(proposal.params), "detected",
                               verify=self.self_check != "none", detected=True)

    def _spec_for(self, path: str, module: nn.Module) -> PatchSpec | None:
        if self.arch is None:
            return None
        for spec in self.arch.patches:
            if spec.match(path, module):
                return spec
        return None

    def _plan(self, path: str, module: nn.Module, kind: str, params: dict, source: str, *, verify: bool,
              detected: bool = False) -> None:
        cls = type(module).__name__
        slot = "forward"
        if "forward" in module.__dict__:
            if self.hooks == "compose" and _composable_hook(module):
                slot = "_old_forward"
            else:
                hint = " (an accelerate hook: patch(..., hooks='compose') binds under it)" if (
                    _composable_hook(module)) else ""
                self.skipped.append(SkippedModule(path, kind, cls, "already has an instance forward (another "
                                                  f"library's hook or patch); left alone so it keeps working{hint}"))
                return
        try:
            fn, op, detail = getattr(self, f"_make_{kind}")(path, module, params, verify=verify, detected=detected)
        except _Skip as why:
            self.skipped.append(SkippedModule(path, kind, cls, str(why)))
            return
        if slot != "forward":
            detail += "; under accelerate hook"
        self.planned.append(_Planned(path, module, fn, PatchedModule(path, kind, op, cls, detail, source), slot))

    def _verdict(self, key: tuple, compute: Callable[[], tuple[dict, str]]) -> tuple[dict, str]:
        """Self-check results per class (same code, same verdict), so a 32-layer model probes once."""
        if key not in self._class_verdict:
            try:
                self._class_verdict[key] = compute()
            except detect.CheckFailed as exc:
                self._class_verdict[key] = f"self-check failed: {exc}"
            except _Skip as exc:
                self._class_verdict[key] = str(exc)
        verdict = self._class_verdict[key]
        if isinstance(verdict, str):
            raise _Skip(verdict)
        return verdict

    # -------------------------------------------------------------- kinds
    def _make_rms_norm(self, path, module, params, *, verify, detected):
        eps = detect.eps_of(module, params["eps_attr"])
        if eps is None:
            raise _Skip(f"no float epsilon attribute among {list(params['eps_attr'])}")
        weight_attr = params.get("weight_attr", "weight")
        if not hasattr(module, weight_attr):
            raise _Skip(f"no {weight_attr!r} attribute")
        weight = getattr(module, weight_attr)
        hidden = weight.shape[-1] if weight is not None else None
        if hidden is None:
            raise _Skip("weight-less RMSNorm: hidden size unknown, not patched")
        make = lambda off, cast: _rms_forward(self.ops, self.orch, eps[0], weight_attr, off, cast)  # noqa: E731
        if detected:
            def compute():
                offset, casting = detect.choose_norm_params(module, make, hidden)
                why = detect.check_norm(module, types.MethodType(make(offset, casting), module), hidden)
                return {"offset": offset, "casting": casting}, why
            chosen, why = self._verdict(("rms_norm", type(module), eps[0]), compute)
            offset, casting = chosen["offset"], chosen["casting"]
        else:
            offset, casting = float(params["offset"]), params["casting"]
            why = ""
            if verify:
                _, why = self._verdict(("rms_norm", type(module), eps[0], offset, casting), lambda: (
                    {}, detect.check_norm(module, types.MethodType(make(offset, casting), module), hidden)))
        detail = f"eps={eps[1]:g} offset={offset:g} casting={casting}" + (f"; {why}" if why else "")
        return make(offset, casting), "rms_norm", detail

    def _make_layer_norm(self, path, module, params, *, verify, detected):
        eps = detect.eps_of(module, params["eps_attr"])
        if eps is None:
            raise _Skip(f"no float epsilon attribute among {list(params['eps_attr'])}")
        w, b = params.get("weight_attr", "weight"), params.get("bias_attr", "bias")
        weight = getattr(module, w, None)
        if weight is None or weight.dim() != 1:
            raise _Skip("LayerNorm without a 1-D weight is not patched")
        fn = _layer_norm_forward(self.ops, self.orch, eps[0], w, b)
        why = ""
        if verify or detected:
            _, why = self._verdict(("layer_norm", type(module), eps[0]), lambda: (
                {}, detect.check_norm(module, types.MethodType(fn, module), weight.shape[-1])))
        return fn, "layer_norm", f"eps={eps[1]:g}" + (f"; {why}" if why else "")

    def _make_mlp(self, path, module, params, *, verify, detected):
        names = [params["down"]] + ([params["gate_up"]] if params["layout"] == "gate_up_fused"
                                    else [params["gate"], params["up"]])
        for n in names:
            if not isinstance(getattr(module, n, None), nn.Module):
                raise _Skip(f"no submodule {n!r} (layout {params['layout']})")
        act = getattr(module, params["act"], None)
        ident = detect.identify_activation(act)
        if ident is None:
            raise _Skip(f"activation {type(act).__name__} ({params['act']}) is not silu, gelu-tanh or gelu")
        op, approx = ident
        act_name = detect.ACTIVATION_NAMES[ident]
        allowed = params.get("activations")
        if allowed and act_name not in allowed:
            raise _Skip(f"activation {act_name} not among the spec's activations {list(allowed)}")
        fn = _mlp_forward(self.ops, self.orch, params, op, approx)
        why = ""
        if verify or detected:
            first = getattr(module, names[-1] if params["layout"] == "gate_up_separate" else names[1])
            hidden = getattr(first, "in_features", None)
            if not isinstance(hidden, int):
                raise _Skip("cannot size a probe: the projection has no in_features")
            _, why = self._verdict(("mlp", type(module), params["layout"], ident), lambda: (
                {}, detect.check_mlp(module, types.MethodType(fn, module), hidden)))
        detail = f"{params['layout']} {act_name} -> {op}" + (f"; {why}" if why else "")
        return fn, op, detail

    def _make_rope(self, path, module, params, *, verify, detected):
        cls_forward = type(module).forward
        name = params["function"]
        _, target = _wrapper_chain(cls_forward, name, type(module).__name__)
        original = target.__globals__.get(name)
        if original is None:
            raise _Skip(f"global {name!r} not found in {target.__module__}")
        half_tables = params.get("tables", "full") == "half"
        rope_fn = self._rope_fns.get(id(original))
        if rope_fn is None:
            rope_fn = _rope_function(self.ops, self.orch, bool(params.get("interleaved", False)), original,
                                     half_tables)
            self._rope_fns[id(original)] = rope_fn
        why = ""
        dims = detect.rope_dims(module)
        if verify or detected:
            if dims is None:
                raise _Skip("cannot size a RoPE probe (no head_dim / num_attention_heads on the module's config)")
            dtype, device = detect._param_dtype_device(module)
            if device.type == "meta":
                raise _Skip("weights are not materialised (meta device); load the weights, then patch")
            heads, kv, head_dim, rot = dims
            _, why = self._verdict(("rope", id(original), rot, half_tables), lambda: ({}, detect.check_rope(
                original, rope_fn, heads=heads, kv_heads=kv, head_dim=head_dim, rot_dim=rot, dtype=dtype,
                device=device, half_tables=half_tables)))
        fn, decorators = _with_global_through(cls_forward, name, rope_fn, self._overlays, type(module).__name__)
        detail = f"{name} rebound for this instance" + ("; half-width cos/sin tables" if half_tables else "")
        if decorators:
            detail += f"; through decorator(s) {', '.join(decorators)}"
        if dims is not None and dims[3] < dims[2]:
            detail += f"; partial rotary {dims[3]}/{dims[2]}"
        return fn, "rope", detail + (f"; {why}" if why else "")


# ---------------------------------------------------------------------------------------------- public API
def patch(
    model: nn.Module,
    config: Any = None,
    *,
    policy: Any = None,
    kernels: Mapping[str, str] | None = None,
    arms: Any = None,
    arm: str | None = None,
    experiment: str | None = None,
    model_id: str | None = None,
    spec: ArchSpec | str | Path | Mapping[str, Any] | None = None,
    detect_unknown: bool | None = None,
    self_check: str = "unknown",
    only: Iterable[str] | None = None,
    attention: bool = False,
    hooks: str = "compose",
    dispatch_config: Any = None,
    strict: bool = False,
) -> PatchReport:
    """Patch ``model`` in place, per instance, and return what was done.

    ``config``: per-model rules (``configs/models.yaml`` format: a path, a mapping; None = the shipped file,
    False = no rules). ``policy``/``kernels`` override the rules for this call; ``arms`` replaces the
    matched experiment's arms and ``arm`` forces one. ``spec`` replaces the architecture spec (for a
    new architecture or a local fix). ``detect_unknown``: None = structural detection only when no spec
    covers the model type; True = also for modules the spec does not cover. ``self_check``: "unknown"
    (detected replacements only), "all" (spec'd ones too, once per class) or "none" (spec'd only; detected
    ones are always checked). ``only`` restricts the kinds (rms_norm, layer_norm, rope, mlp). ``attention``:
    switch the model to ``attn_implementation="layerzero"`` (restored by :func:`unpatch`). ``hooks``: what to
    do with a module whose forward another library replaced: "compose" (default; for accelerate dispatch
    hooks, bind the replacement as ``module._old_forward`` so device placement still wraps it; other
    libraries' forwards are skipped and reported) or "skip" (report every such module, patch none).
    ``strict``: a kernel requested through ``kernels``, the rules or the arm that cannot run on this machine
    (backend not installed, device or dtype not supported) raises PatchError instead of a warning. Either
    way the report's ``kernels`` shows what will actually serve each operation, never a request that is
    silently replaced.

    Idempotent: patching again with the same arguments returns the same report; different arguments
    unpatch first. Raises ConfigValidationError for invalid rules/specs and PatchError for invalid
    arguments; nothing is bound unless everything validated.
    """
    if not isinstance(model, nn.Module):
        raise PatchError(f"patch: expected a torch.nn.Module (a Transformers model), got {type(model).__name__}")
    if self_check not in SELF_CHECK_MODES:
        raise PatchError(f"patch: self_check={self_check!r}; use one of {', '.join(SELF_CHECK_MODES)}")
    if hooks not in HOOK_MODES:
        raise PatchError(f"patch: hooks={hooks!r}; use one of {', '.join(HOOK_MODES)}")
    kinds = frozenset(KINDS if only is None else only)
    unknown_kinds = kinds - set(KINDS)
    if unknown_kinds:
        raise PatchError(f"patch: only={sorted(unknown_kinds)} has unknown kinds; use any of {', '.join(KINDS)}")
    kwargs = dict(config=config, policy=policy, kernels=kernels, arms=arms, arm=arm, experiment=experiment,
                  model_id=model_id, spec=spec, detect_unknown=detect_unknown, self_check=self_check,
                  only=None if only is None else sorted(kinds), attention=attention, hooks=hooks,
                  dispatch_config=dispatch_config, strict=strict)
    key = _call_key(kwargs)
    state: _State | None = model.__dict__.get(STATE_ATTR)
    if state is None and STATE_ATTR in model.__dict__:  # a pickled patched model, loaded (unpatched)
        del model.__dict__[STATE_ATTR]
        _drop_restored_forwards(model)
    if state is not None:
        if state.key == key:
            return state.report
        unpatch(model)

    hf_config = getattr(model, "config", None)
    model_type = getattr(hf_config, "model_type", None)
    arch = _arch_spec(spec, model_type)
    detect_mode = arch is None if detect_unknown is None else bool(detect_unknown)

    setup = build_setup(hf_config, model, rules=config, policy=policy, kernels=kernels, arms=arms, arm=arm,
                        experiment=experiment, model_id=model_id, dispatch_config=dispatch_config)
    planner: _Planner | None = None
    try:
        served, unavailable = _requested_kernels(model, setup, warn=not strict)
        if unavailable and strict:
            raise PatchError("patch(strict=True): requested kernels cannot run here: " + "; ".join(
                f"{op} -> {why}" for op, why in unavailable.items()))
        planner = _Planner(model, arch, setup.name, detect_mode=detect_mode, self_check=self_check, kinds=kinds,
                           hooks=hooks)
        planner.run()
    except BaseException:
        for overlay in planner._overlays.values() if planner is not None else ():
            sys.modules.pop(overlay.__name__, None)
        release(setup)
        raise

    report = PatchReport(
        model_class=type(model).__name__,
        model_type=model_type,
        spec=arch.source if arch else ("detected" if detect_mode else None),
        orchestrator=setup.name,
        experiment=setup.experiment,
        arm=setup.arm,
        rules=setup.resolution.rules,
        kernels=served,
        skipped=list(planner.skipped),
        notes=list(setup.notes) + [f"requested kernel for {op} cannot run: {why}" for op, why in unavailable.items()],
    )
    overlays = tuple(m.__name__ for m in planner._overlays.values())
    owner = Owner(setup, on_close=lambda: [sys.modules.pop(n, None) for n in overlays])
    state = _State(key, kwargs, setup, report, id(model), owner, overlay_modules=list(overlays))
    try:
        for item in planner.planned:
            bound = types.MethodType(item.fn, item.module)
            previous = item.module.__dict__.get(item.slot)
            setattr(item.module, item.slot, bound)
            state.bindings.append(_Binding(item.module, bound, item.slot, previous))
            report.patched.append(item.record)
        for module in [model, *planner.attention]:
            module.__dict__[ORCHESTRATOR_ATTR] = setup.name
            state.attr_modules.append(module)
        model.__dict__[ARM_ATTR] = setup.arm
        if attention and hf_config is not None and hf_config._attn_implementation != "layerzero":
            import layerzero_hf.attention  # noqa: F401  (registers the implementation)

            state.previous_attn = hf_config._attn_implementation
            model.set_attn_implementation("layerzero")
    except BaseException:
        _undo(model, state)
        raise
    if hf_config is not None:
        report.attn_implementation = hf_config._attn_implementation
        bind_config(hf_config, setup)
        if report.attn_implementation != "layerzero":
            report.notes.append(
                f"attention runs through Transformers' {report.attn_implementation!r} implementation; load with "
                "attn_implementation='layerzero' or pass attention=True to dispatch it as well")
    if arch is None and not detect_mode:
        report.notes.append(f"no patch spec for model_type {model_type!r} and detection disabled: nothing patched")
    if not report.patched and not report.skipped:
        report.notes.append("no module matched the spec or the detector")
    model.__dict__[STATE_ATTR] = state
    # A model dropped while patched must not leave its orchestrator or overlay modules behind.
    weakref.finalize(model, owner.close)
    return report


def unpatch(model: nn.Module) -> bool:
    """Restore every forward this package bound and drop its attributes. False if the model was not patched."""
    state: _State | None = model.__dict__.pop(STATE_ATTR, None)
    if state is None:
        return False
    _undo(model, state)
    return True


def _undo(model: nn.Module, state: _State) -> None:
    for b in reversed(state.bindings):
        slots = b.module.__dict__
        if slots.get(b.slot) is b.bound:
            if b.slot == "forward":
                del slots["forward"]
            else:
                slots[b.slot] = b.previous
        elif b.slot != "forward" and slots.get("forward") is b.bound:
            # the hook was removed while patched (accelerate moved _old_forward back to forward)
            slots["forward"] = b.previous
    for module in state.attr_modules:
        module.__dict__.pop(ORCHESTRATOR_ATTR, None)
        module.__dict__.pop(SITE_ATTR, None)
    # modules whose orchestrator the attention function resolved lazily while patched
    for module in model.modules():
        if module.__dict__.get(ORCHESTRATOR_ATTR) == state.setup.name:
            del module.__dict__[ORCHESTRATOR_ATTR]
        site = module.__dict__.get(SITE_ATTR)
        if site is not None and site.orchestrator_name == state.setup.name:
            del module.__dict__[SITE_ATTR]
    model.__dict__.pop(ARM_ATTR, None)
    hf_config = getattr(model, "config", None)
    if state.previous_attn is not None:
        model.set_attn_implementation(state.previous_attn)
    if hf_config is not None:
        unbind_config(hf_config, state.setup)
    state.owner.close()


def is_patched(model: nn.Module) -> bool:
    return model.__dict__.get(STATE_ATTR) is not None


def patch_report(model: nn.Module) -> PatchReport | None:
    state: _State | None = model.__dict__.get(STATE_ATTR)
    return state.report if state else None


def _setup_of(model: nn.Module) -> ModelSetup | None:
    state: _State | None = model.__dict__.get(STATE_ATTR)
    if state is not None:
        return state.setup
    config = getattr(model, "config", None)
    return lazy_setup(config) if config is not None else None


def orchestrator_of(model: nn.Module) -> Any:
    """The model's DispatchOrchestrator (for explain() and telemetry): the patch's, or the one the attention
    function resolved for a model loaded with attn_implementation="layerzero"; None when it has neither."""
    setup = _setup_of(model)
    return setup.orchestrator if setup else None


def model_telemetry(model: nn.Module) -> dict[str, Any]:
    """The model's telemetry snapshot with its labels (orchestrator, model id, experiment, arm), so A/B
    dashboards can split by arm."""
    setup = _setup_of(model)
    if setup is None:
        raise PatchError("model_telemetry: the model has no LayerZero orchestrator; call layerzero_hf.patch(model) "
                         "or load it with attn_implementation='layerzero' and run a forward first")
    return {"labels": setup.labels(), "snapshot": setup.orchestrator.get_telemetry()}


def model_arm(model: nn.Module) -> str | None:
    """The A/B arm the model runs (patched or lazily resolved), None outside any experiment."""
    setup = _setup_of(model)
    return setup.arm if setup else None


@contextlib.contextmanager
def patched(model: nn.Module, config: Any = None, **kwargs: Any) -> Iterator[PatchReport]:
    """``with patched(model): ...`` patches for the block and restores the previous state after it
    (unpatched, or the earlier patch with its arguments)."""
    previous: _State | None = model.__dict__.get(STATE_ATTR)
    report = patch(model, config, **kwargs)
    try:
        yield report
    finally:
        unpatch(model)
        if previous is not None:
            prev = dict(previous.kwargs)
            patch(model, prev.pop("config"), **prev)


# ---------------------------------------------------------------------------------------------- helpers
def _unpatched_on_load() -> None:
    """What a pickled patch state loads as: no patch (see ``_State.__reduce__``)."""
    return None


def _drop_restored_forwards(model: nn.Module) -> None:
    """After loading a pickled patched model, each patched module holds its class forward bound as an
    instance attribute (that is how a bound method pickles): the same code, but it would make ``patch()``
    treat the module as another library's. Remove exactly those."""
    for module in model.modules():
        for slot in ("forward", "_old_forward"):
            bound = module.__dict__.get(slot)
            if (slot == "forward" and getattr(bound, "__self__", None) is module
                    and getattr(bound, "__func__", None) is type(module).forward):
                del module.__dict__[slot]
        for attr in (ORCHESTRATOR_ATTR, SITE_ATTR):
            module.__dict__.pop(attr, None)
    model.__dict__.pop(ARM_ATTR, None)


def _requested_kernels(model: nn.Module, setup: ModelSetup, warn: bool = True
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


def _arch_spec(spec: Any, model_type: str | None) -> ArchSpec | None:
    if spec is None:
        return spec_for(model_type)
    if isinstance(spec, ArchSpec):
        return spec
    if isinstance(spec, Mapping):
        return parse_arch_spec(spec, "<spec mapping>")
    if isinstance(spec, (str, Path)):
        return load_arch_spec(spec)
    raise PatchError(f"patch: spec must be an ArchSpec, a YAML path or a mapping, got {type(spec).__name__}")


def _call_key(kwargs: Mapping[str, Any]) -> tuple:
    def freeze(v: Any) -> Any:
        if isinstance(v, Mapping):
            return tuple(sorted((str(k), freeze(x)) for k, x in v.items()))
        if isinstance(v, (list, tuple)):
            return tuple(freeze(x) for x in v)
        if isinstance(v, (str, int, float, bool, type(None), Path)):
            return v
        return ("id", id(v))

    return tuple((k, freeze(v)) for k, v in sorted(kwargs.items()))
