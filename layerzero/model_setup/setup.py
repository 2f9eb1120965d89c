"""A model's own orchestrator: rules and A/B arm turned into a dispatcher registered in :mod:`layerzero.ops`.

Every model an integration sets up gets its own orchestrator, built from the rules that match its facts
and its experiment arm, registered under a unique name (a string, so compiled graphs can carry it as a
constant). Two models in one process therefore choose kernels, count telemetry and open circuit breakers
independently.

A setup is shared by counted claims (:class:`Owner`: a patch, a config binding, a deep copy); when the
last claim is dropped the orchestrator is unregistered and its background work (a hot-reload watcher)
stopped, so a collected model leaves nothing behind (see :mod:`layerzero.model_setup.bindings`).
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from layerzero import ops
from layerzero.dispatch import create_orchestrator
from layerzero.model_setup.facts import ModelFacts, as_facts
from layerzero.model_setup.policy_sources import default_dispatch_config, default_policy_mapping, policy_mapping
from layerzero.model_setup.resolve import load_rules, resolve
from layerzero.model_setup.rules import Resolution, RuleSet
from layerzero.policy import Policy, load_policy
from layerzero.policy.merge import merge_policy

__all__ = ["ModelSetup", "Owner", "build_setup", "release"]

_counter = itertools.count(1)
_lock = threading.Lock()


@dataclass
class ModelSetup:
    """A model's registered orchestrator and the decisions behind it."""

    name: str
    orchestrator: Any
    resolution: Resolution
    facts: ModelFacts
    notes: tuple[str, ...] = ()
    users: int = 1  # claims: a patch, a config binding, a deep copy; released at zero
    on_release: list[Callable[[], None]] = field(default_factory=list)  # run once, after unregistering

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
    facts: Mapping[str, Any] | ModelFacts,
    *,
    rules: Any = None,
    policy: Any = None,
    kernels: Mapping[str, str] | None = None,
    arms: Any = None,
    arm: str | None = None,
    experiment: str | None = None,
    model_id: str | None = None,
    dispatch_config: Any = None,
    name_prefix: str = "layerzero",
) -> ModelSetup:
    """Resolve rules/arm for a model's facts, build its orchestrator and register it under a fresh name
    (``<name_prefix>:<model_type>:<n>``). The caller holds the one claim the setup starts with.

    ``rules``: a models.yaml path, a mapping, a RuleSet, None (:func:`~layerzero.model_setup.load_rules`'s
    default) or False (no rules). ``policy``: a policy path or mapping (merged over the rules, so the caller
    wins) or a ``Policy`` object (used as is: rules and arms then only pick the arm and are noted).
    """
    ruleset = RuleSet() if rules is False else load_rules(rules)
    known = as_facts(facts)
    policy_obj = policy if isinstance(policy, Policy) else None
    fragment = policy_mapping(policy) if policy is not None and policy_obj is None else None
    res = resolve(ruleset, known, model_id=model_id, arms=arms, arm=arm, experiment=experiment,
                  policy=fragment, kernels=kernels)
    notes: list[str] = []
    overrides = res.policy_mapping()
    if policy_obj is not None:
        if overrides:
            notes.append("an explicit Policy object was passed: rule/arm policy overrides were not merged into it")
        final = policy_obj
    elif overrides:
        final = load_policy(merge_policy(default_policy_mapping(), overrides))
    else:
        final = None  # the dispatcher's default (the packaged default policy, as the global one uses)
    cfg = dispatch_config if dispatch_config is not None else default_dispatch_config()
    orchestrator = create_orchestrator(config=cfg, policy=final)
    name = f"{name_prefix}:{known.model_type or 'model'}:{next(_counter)}"
    ops.register_orchestrator(name, orchestrator)
    return ModelSetup(name, orchestrator, res, known, tuple(notes))


def release(setup: ModelSetup) -> None:
    """Drop one claim on a setup; the last one unregisters its orchestrator from :mod:`layerzero.ops`,
    stops its background work and runs the setup's ``on_release`` callbacks."""
    with _lock:
        setup.users -= 1
        last = setup.users == 0
    if not last:
        return
    try:
        ops.unregister_orchestrator(setup.name)
        close = getattr(setup.orchestrator, "close", None)
        if callable(close):
            close()
        for callback in setup.on_release:
            callback()
    except Exception:  # noqa: BLE001 - interpreter shutdown: module globals may already be gone
        pass


class Owner:
    """One idempotent claim on a setup (a patch state, a config binding): closing it twice releases once,
    so an explicit unpatch and a later garbage-collection finalizer cannot double-release."""

    __slots__ = ("setup", "closed", "on_close")

    def __init__(self, setup: ModelSetup, on_close: Callable[[], Any] | None = None):
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
