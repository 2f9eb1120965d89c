"""Each Transformers model's own orchestrator: found through its modules, built at patch or load time.

The rules, the arm and the orchestrator come from :mod:`layerzero.model_setup` (shared with the vLLM
plugin); this module converts the model's config into facts, and ties the setup to the config object (one
per loaded model) through the core's weak-reference lifecycle. Kernels and the attention function find
the orchestrator through ``module._layerzero_orchestrator`` (a string, so compiled graphs can carry it as a
constant).

The load-time hook: Transformers 5.17 offers no post-load callback for a custom attention implementation
(``post_init`` and ``from_pretrained`` have no plug-in point; ``set_use_kernels`` is for the HF ``kernels``
hub only), and rewriting ``PreTrainedModel`` methods would be the global patching we avoid. The attention
module, however, carries the model's ``config``, so the attention function calls :func:`orchestrator_for`
on its first call for a module: the rules and arm are resolved from ``module.config``, the orchestrator is
built once per config object, and its name is stored on the module.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import torch

from layerzero import model_setup
from layerzero.model_setup import ModelSetup, Owner, SetupBindings, release
from layerzero.model_setup.policy_sources import default_dispatch_config
from layerzero.ops import has_orchestrator
from layerzero.selection.measured_ranking import measured_ranking_for_device
from layerzero_hf.model_key import model_key
from layerzero_hf.rules import hf_model_facts, load_rules

__all__ = [
    "ARM_ATTR",
    "NAME_PREFIX",
    "ORCHESTRATOR_ATTR",
    "SITE_ATTR",
    "ModelSetup",
    "Owner",
    "bind_config",
    "build_setup",
    "call_site_for",
    "lazy_setup",
    "orchestrator_for",
    "release",
    "setup_for_config",
    "unbind_config",
]

ORCHESTRATOR_ATTR = "_layerzero_orchestrator"
SITE_ATTR = "_layerzero_call_site"  # the attention module's CallSite (layerzero.dispatch.callsite)
ARM_ATTR = "_layerzero_arm"
NAME_PREFIX = "layerzero_hf"

_by_config = SetupBindings()


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
    """Resolve rules/arm for a Transformers config, build the orchestrator and register it under a fresh
    name (:func:`layerzero.model_setup.build_setup`; the caller holds its one claim).

    ``rules``: a models.yaml path, a mapping, a RuleSet, None (``$LAYERZERO_HF_RULES``, else the shipped
    file) or False (no rules). ``policy``: a policy path or mapping (merged over the rules, so the caller
    wins) or a ``Policy`` object (used as is: rules and arms then only pick the arm and are noted).
    """
    ruleset = False if rules is False else load_rules(rules)
    if dispatch_config is None:
        # rank by measured cost with this model's own tuned times on top (``layerzero_hf.tune``)
        scope = model_key(config) if hasattr(config, "to_dict") else None  # a module without an HF config: none
        dispatch_config = dataclasses.replace(default_dispatch_config(),
                                              ranking=measured_ranking_for_device(scope=scope))
    return model_setup.build_setup(hf_model_facts(config, model), rules=ruleset, policy=policy, kernels=kernels,
                                   arms=arms, arm=arm, experiment=experiment, model_id=model_id,
                                   dispatch_config=dispatch_config, name_prefix=NAME_PREFIX)


# ---------------------------------------------------------------------------------------------- load-time hook
def setup_for_config(config: Any, model: Any = None) -> ModelSetup:
    """The orchestrator shared by every module of the model that owns ``config`` (built on first use from
    the rules file named by $LAYERZERO_HF_RULES, else the shipped one; later ``patch()`` calls replace it).
    Released when the config is garbage-collected."""
    return _by_config.get_or_build(config, lambda: build_setup(config, model))


def bind_config(config: Any, setup: ModelSetup) -> None:
    """Make ``setup`` the one lazily found for ``config`` (``patch()`` calls this); the binding owns a
    reference until it is replaced, unbound, or the config is collected."""
    _by_config.bind(config, setup)


def unbind_config(config: Any, setup: ModelSetup) -> None:
    _by_config.unbind(config, setup)


def lazy_setup(config: Any) -> ModelSetup | None:
    """The setup the attention function resolved (or a patch bound) for ``config``, if any."""
    return _by_config.get(config)


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
