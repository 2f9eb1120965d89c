"""Per-model orchestrators: rules and A/B arms turned into a registered dispatcher, at patch or load time.

Every patched (or ``attn_implementation="layerzero"``-loaded) model gets its own orchestrator, built from
the rules that match its config and its experiment arm, registered in :mod:`layerzero.ops` under a unique
name. Kernels and the attention function find it through ``module._layerzero_orchestrator`` (a string, so
compiled graphs can carry it as a constant). Two models in one process therefore choose kernels, count
telemetry and open circuit breakers independently.

The load-time hook: Transformers 5.17 offers no post-load callback for a custom attention implementation
(``post_init`` and ``from_pretrained`` have no plug-in point; ``set_use_kernels`` is for the HF ``kernels``
hub only), and rewriting ``PreTrainedModel`` methods would be the global patching we avoid. The attention
module, however, carries the model's ``config`` (one object per loaded model), so the attention function
calls :func:`orchestrator_for` on its first call for a module: the rules and arm are resolved from
``module.config``, the orchestrator is built once per config object, and its name is stored on the module.
"""

from __future__ import annotations

import itertools
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from layerzero.ops import has_orchestrator
from layerzero_hf.rules import ModelFacts, Resolution, RuleSet, load_rules, merge_policy, resolve

ORCHESTRATOR_ATTR = "_layerzero_orchestrator"
SITE_ATTR = "_layerzero_call_site"  # the attention module's CallSite (layerzero.dispatch.callsite)
ARM_ATTR = "_layerzero_arm"

_counter = itertools.count(1)
_lock = threading.Lock()
_by_config: dict[int, "Owner"] = {}


@dataclass
class ModelSetup:
    """A model's registered orchestrator and the decisions behind it."""

    name: str
    orchestrator: Any
    resolution: Resolution
    facts: ModelFacts
    notes: tuple[str, ...] = ()
    users: int = 1  # owners: a patch state, a config binding, a deep copy; unregistered at zero

    def retain(self) -> "ModelSetup":
        with _lock:
            self.users += 1
        return self

    @property
    def arm(self) -> str | None:
        return self.resolution.arm

    @property
    def experiment(self) -> str | None:
        return self.resolution.experiment

    def labels(self) -> dict[str, str | None]:
        """Labels to attach to this model's telemetry (dashboards split A/B arms by these)."""
        return {
            "orchestrator": self.name,
            "model_type": self.facts.model_type,
            "model_id": self.resolution.model_id,
            "experiment": self.resolution.experiment,
            "arm": self.resolution.arm,
        }


def build_setup(
    config: Any,
    model: Any = None,
    *,
    rules: Any = None,
    policy: Any = None,
    kernels: Mapping[str, str] | None = None,
    arms: Any = None,
    arm: str | None = None,
    experiment: str | None = None,
    model_id: str | None = None,
    dispatch_config: Any = None,
) -> ModelSetup:
    """Resolve rules/arm for a config, build the orchestrator and register it under a fresh name.

    ``rules``: a models.yaml path, a mapping, a RuleSet, None (the shipped file) or False (no rules).
    ``policy``: a policy path or mapping (merged over the rules, so the caller wins) or a ``Policy``
    object (used as is: rules and arms then only pick the arm and are noted in the report).
    """
    from layerzero import ops
    from layerzero.dispatch import create_orchestrator
    from layerzero.policy import Policy, load_policy

    ruleset = RuleSet() if rules is False else load_rules(rules)
    facts = ModelFacts.of(config, model)
    policy_obj = policy if isinstance(policy, Policy) else None
    fragment = _policy_mapping(policy) if policy is not None and policy_obj is None else None
    res = resolve(ruleset, facts, model_id=model_id, arms=arms, arm=arm, experiment=experiment,
                  policy=fragment, kernels=kernels)
    notes: list[str] = []
    overrides = res.policy_mapping()
    if policy_obj is not None:
        if overrides:
            notes.append("an explicit Policy object was passed: rule/arm policy overrides were not merged into it")
        final = policy_obj
    elif overrides:
        final = load_policy(merge_policy(_default_policy_mapping(), overrides))
    else:
        final = None  # the dispatcher's default (the packaged default policy, as the global one uses)
    cfg = dispatch_config if dispatch_config is not None else _default_dispatch_config()
    orchestrator = create_orchestrator(config=cfg, policy=final)
    name = f"layerzero_hf:{facts.model_type or 'model'}:{next(_counter)}"
    ops.register_orchestrator(name, orchestrator)
    return ModelSetup(name, orchestrator, res, facts, tuple(notes))


def release(setup: ModelSetup) -> None:
    """Drop one owner of a model's orchestrator; the last one unregisters it from :mod:`layerzero.ops`."""
    with _lock:
        setup.users -= 1
        last = setup.users == 0
    if last:
        try:
            from layerzero import ops

            ops.unregister_orchestrator(setup.name)
        except Exception:  # interpreter shutdown
            pass


class Owner:
    """One idempotent claim on a setup (a patch state, a config binding): closing it twice releases once,
    so an explicit unpatch and a later garbage-collection finalizer cannot double-release."""

    __slots__ = ("setup", "closed", "on_close")

    def __init__(self, setup: ModelSetup, on_close: Any = None):
        self.setup = setup
        self.closed = False
        self.on_close = on_close

    def close(self) -> None:
        with _lock:
            if self.closed:
                return
            self.closed = True
        if self.on_close is not None:
            self.on_close()
        release(self.setup)


def _default_dispatch_config() -> Any:
    from layerzero.dispatch import DispatchConfig, DispatchMode

    try:
        from layerzero.policy import default_policy_path

        path = default_policy_path()
    except ImportError:
        path = None
    return DispatchConfig(mode=DispatchMode.DYNAMIC, policy_path=str(path) if path else None)


def _default_policy_mapping() -> dict[str, Any]:
    """The packaged default policy as a mapping, so rule overrides add to it rather than replace it."""
    try:
        from layerzero.policy import default_policy_path

        path = default_policy_path()
    except ImportError:
        return {}
    if path is None:
        return {}
    from layerzero.config_files import load_yaml_file

    data = load_yaml_file(path, "policy file") or {}
    return dict(data) if isinstance(data, Mapping) else {}


def _policy_mapping(policy: Any) -> dict[str, Any]:
    if isinstance(policy, Mapping):
        return dict(policy)
    import os

    if isinstance(policy, (str, os.PathLike)):
        from layerzero.config_files import load_yaml_file
        from layerzero.errors import ConfigValidationError, ValidationProblem

        path = os.fspath(policy)
        data = load_yaml_file(path, "policy file") or {}  # guarded: regular files only, alias/size limits
        if not isinstance(data, Mapping):
            raise ConfigValidationError([ValidationProblem("<root>", type(data).__name__, "expected a mapping", path)])
        return dict(data)
    raise TypeError(f"policy: expected a path, a mapping or a layerzero.policy.Policy, got {type(policy).__name__}")


# ---------------------------------------------------------------------------------------------- load-time hook
def setup_for_config(config: Any, model: Any = None) -> ModelSetup:
    """The orchestrator shared by every module of the model that owns ``config`` (built on first use from
    the rules file named by $LAYERZERO_HF_RULES, else the shipped one; later ``patch()`` calls replace it).
    Released when the config is garbage-collected."""
    key = id(config)
    entry = _by_config.get(key)
    if entry is not None:
        return entry.setup
    with _lock:
        entry = _by_config.get(key)
    if entry is None:
        setup = build_setup(config, model)  # rules: $LAYERZERO_HF_RULES, else the shipped file
        with _lock:
            entry = _by_config.get(key)
            if entry is None:
                entry = _by_config[key] = Owner(setup)
                weakref.finalize(config, _forget_config, key, entry)
                return setup
        release(setup)  # another thread won the race
    return entry.setup


def bind_config(config: Any, setup: ModelSetup) -> None:
    """Make ``setup`` the one lazily found for ``config`` (``patch()`` calls this); the binding owns a
    reference until it is replaced, unbound, or the config is collected."""
    key = id(config)
    owner = Owner(setup.retain())
    with _lock:
        previous = _by_config.get(key)
        _by_config[key] = owner
    if previous is not None:
        previous.close()
    weakref.finalize(config, _forget_config, key, owner)


def unbind_config(config: Any, setup: ModelSetup) -> None:
    with _lock:
        owner = _by_config.get(id(config))
        if owner is None or owner.setup is not setup:
            return
        del _by_config[id(config)]
    owner.close()


def _forget_config(key: int, owner: Owner) -> None:
    with _lock:
        if _by_config.get(key) is owner:
            del _by_config[key]
    owner.close()


def lazy_setup(config: Any) -> ModelSetup | None:
    """The setup the attention function resolved (or a patch bound) for ``config``, if any."""
    owner = _by_config.get(id(config))
    return owner.setup if owner is not None else None


def orchestrator_for(module: Any) -> str | None:
    """The orchestrator name the attention function should use for ``module``.

    Cheap after the first call (one dict lookup). On the first eager call for a module of a model loaded
    with ``attn_implementation="layerzero"`` and never patched, resolves the model's rules and A/B arm from
    ``module.config`` and stores the name on the module. Under ``torch.compile`` tracing it never builds
    anything (no side effects in the graph): an unset module then uses the global dispatcher.
    """
    name = module.__dict__.get(ORCHESTRATOR_ATTR)
    if torch.compiler.is_compiling():
        return name
    if name is not None:
        if has_orchestrator(name):
            return name
        # a name from another process (an unpickled model) or a released setup: resolve again below
    config = getattr(module, "config", None)
    if config is None:
        return None
    setup = setup_for_config(config)
    module.__dict__[ORCHESTRATOR_ATTR] = setup.name
    return setup.name


def call_site_for(module: Any) -> Any:
    """What the attention function passes as ``orchestrator=`` for ``module``: in eager mode the module's
    own :class:`~layerzero.dispatch.CallSite` (created on first use, replaced when the module's orchestrator
    name changes), so decode steps reuse the bound plan; under ``torch.compile`` the name alone (no object
    is created while tracing)."""
    name = orchestrator_for(module)
    site = module.__dict__.get(SITE_ATTR)
    if site is not None and site.orchestrator_name == name:
        return site
    if torch.compiler.is_compiling():
        return name
    from layerzero import ops

    site = module.__dict__[SITE_ATTR] = ops.call_site(name)
    return site
