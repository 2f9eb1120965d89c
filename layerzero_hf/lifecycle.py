"""The patch lifecycle: bind a plan onto a model, record it, undo it exactly, report it, survive pickling.

Nothing global is touched. Norms and MLPs get a forward bound on the instance (``module.forward =
MethodType(fn, module)``); the parameters, buffers, state-dict keys and ``save_pretrained`` output stay
exactly the same. RoPE gets a per-instance copy of the attention forward (:mod:`layerzero_hf.overlay`).
Every binding is recorded, so :func:`unpatch` deletes exactly the instance attributes it added and the class
forwards serve again (``'forward' not in module.__dict__``). What to bind is decided by
:mod:`layerzero_hf.planner`; what a patch's arguments mean by :mod:`layerzero_hf.patch_config`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import types
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from torch import nn

from layerzero.errors import PatchError
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
from layerzero_hf.overlay import drop_overlays
from layerzero_hf.patch_config import KernelChoice, PatchTargets, resolve_arguments
from layerzero_hf.planner import Planner
from layerzero_hf.report import PatchReport
from layerzero_hf.requested import requested_kernels
from layerzero_hf.specs import ArchSpec, load_arch_spec, parse_arch_spec, spec_for

__all__ = ["is_patched", "model_arm", "model_telemetry", "orchestrator_of", "patch", "patch_report", "patched",
           "unpatch"]

STATE_ATTR = "_layerzero_state"


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
    """Everything one patch did to a model (stored on the model as ``_layerzero_state``), so that
    :func:`unpatch` undoes exactly that and :func:`patched` can restore it."""

    key: tuple
    targets: PatchTargets
    choice: KernelChoice
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
        state = _State(self.key, self.targets, self.choice, setup, copy.deepcopy(self.report), 0,
                       Owner(setup), previous_attn=self.previous_attn)
        state.bindings = [_Binding(mapped(b.module), mapped(b.bound), b.slot, mapped(b.previous))
                          for b in self.bindings]
        state.attr_modules = [mapped(m) for m in self.attr_modules]
        new_model = memo.get(self.model_key)
        if new_model is not None:
            state.model_key = id(new_model)
            weakref.finalize(new_model, state.owner.close)
        return state


def patch(model: nn.Module, targets: PatchTargets | None = None, choice: KernelChoice | None = None,
          **keywords: Any) -> PatchReport:
    """Patch ``model`` in place, per instance, and return what was done.

    What to patch is a :class:`PatchTargets`, how kernels are chosen a :class:`KernelChoice`; both are
    frozen and validated when built, so a bad value fails where it was written::

        patch(model, PatchTargets(kinds=["rms_norm", "rope"], exclude=["lm_head"], verify="all"),
              KernelChoice(rules="models.yaml", kernels={"rms_norm": "liger_rms_norm"}))

    Every field can also be given as a keyword, which replaces it in the object passed (or the default).
    :class:`PatchTargets`: ``only`` (its ``kinds``: rms_norm, layer_norm, rope, mlp or any kind registered
    with ``register_patch_kind``), ``include``/``exclude`` (module-path globs), ``spec`` (an ArchSpec, YAML
    path or mapping replacing the architecture spec), ``detect_unknown`` (its ``detect``: None = structural
    detection only when no spec covers the model type; True = also for modules the spec does not cover),
    ``self_check`` (its ``verify``: "unknown" checks detected replacements only, "all" spec'd ones too, once
    per class, "none" spec'd ones never; detected ones are always checked), ``attention`` (switch the model
    to ``attn_implementation="layerzero"``, restored by :func:`unpatch`), ``hooks`` ("compose", the default:
    under an accelerate dispatch hook, bind as ``module._old_forward`` so device placement still wraps it;
    other libraries' forwards are skipped and reported; "skip": report every such module, patch none) and
    ``strict`` (a kernel requested through ``kernels``, the rules or the arm that cannot run here raises
    PatchError instead of a warning; either way the report's ``kernels`` shows what will actually serve each
    operation). :class:`KernelChoice`: ``rules`` (per-model rules, ``configs/models.yaml`` format: a path, a
    mapping; None = the shipped file, False = no rules), ``policy``/``kernels`` (override the rules for this
    call), ``arms`` (replace the matched experiment's arms), ``arm`` (force one), ``experiment``,
    ``model_id``, ``dispatch_config``. ``config=`` is the deprecated name of ``rules=`` (DeprecationWarning).

    Idempotent: patching again with the same arguments returns the same report; different arguments
    unpatch first. Raises ConfigValidationError for invalid rules/specs and PatchConfigError (a
    ConfigValidationError and a PatchError) for invalid arguments; nothing is bound unless everything
    validated.
    """
    targets, choice = resolve_arguments("patch", targets, choice, keywords)
    if not isinstance(model, nn.Module):
        raise PatchError(f"patch: expected a torch.nn.Module (a Transformers model), got {type(model).__name__}")
    key = _call_key(targets, choice)
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
    arch = _arch_spec(targets.spec, model_type)
    detect_mode = arch is None if targets.detect is None else targets.detect
    setup = build_setup(hf_config, model, rules=choice.rules, policy=choice.policy, kernels=choice.kernels,
                        arms=choice.arms, arm=choice.arm, experiment=choice.experiment, model_id=choice.model_id,
                        dispatch_config=choice.dispatch_config)
    planner: Planner | None = None
    try:
        served, unavailable = requested_kernels(model, setup, warn=not targets.strict)
        if unavailable and targets.strict:
            raise PatchError("patch(strict=True): requested kernels cannot run here: " + "; ".join(
                f"{op} -> {why}" for op, why in unavailable.items()))
        planner = Planner(model, arch, setup.name, detect_mode=detect_mode, self_check=targets.verify,
                          kinds=targets.selected_kinds, hooks=targets.hooks, include=targets.include,
                          exclude=targets.exclude)
        planner.run()
    except BaseException:
        drop_overlays(planner.overlays if planner is not None else {})
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
    overlays = [m.__name__ for m in planner.overlays.values()]
    owner = Owner(setup, on_close=lambda: drop_overlays(overlays))
    state = _State(key, targets, choice, setup, report, id(model), owner, overlay_modules=list(overlays))
    try:
        _bind(model, planner, state)
        if targets.attention and hf_config is not None and hf_config._attn_implementation != "layerzero":
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


def _bind(model: nn.Module, planner: Planner, state: _State) -> None:
    """Bind every planned forward and tag the model and its attention modules with the orchestrator; each
    step is recorded on ``state`` first, so :func:`_undo` can take back a partial binding."""
    for item in planner.planned:
        bound = types.MethodType(item.fn, item.module)
        previous = item.module.__dict__.get(item.slot)
        setattr(item.module, item.slot, bound)
        state.bindings.append(_Binding(item.module, bound, item.slot, previous))
        state.report.patched.append(item.record)
    for module in [model, *planner.attention]:
        module.__dict__[ORCHESTRATOR_ATTR] = state.setup.name
        state.attr_modules.append(module)
    model.__dict__[ARM_ATTR] = state.setup.arm


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
def patched(model: nn.Module, targets: PatchTargets | None = None, choice: KernelChoice | None = None,
            **keywords: Any) -> Iterator[PatchReport]:
    """``with patched(model): ...`` patches for the block (same arguments as :func:`patch`) and restores the
    previous state after it (unpatched, or the earlier patch with its arguments)."""
    previous: _State | None = model.__dict__.get(STATE_ATTR)
    targets, choice = resolve_arguments("patched", targets, choice, keywords, stacklevel=4)
    report = patch(model, targets, choice)
    try:
        yield report
    finally:
        unpatch(model)
        if previous is not None:
            patch(model, previous.targets, previous.choice)


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


def _call_key(targets: PatchTargets, choice: KernelChoice) -> tuple:
    """A comparable key of the arguments (for idempotence): values compared by content, objects that are
    neither (an ArchSpec, a Policy) by identity."""
    def freeze(v: Any) -> Any:
        if isinstance(v, Mapping):
            return tuple(sorted((str(k), freeze(x)) for k, x in v.items()))
        if isinstance(v, (list, tuple)):
            return tuple(freeze(x) for x in v)
        if isinstance(v, (str, int, float, bool, type(None), Path)):
            return v
        return ("id", id(v))

    return tuple((f"{type(obj).__name__}.{f.name}", freeze(getattr(obj, f.name)))
                 for obj in (targets, choice) for f in dataclasses.fields(obj))
