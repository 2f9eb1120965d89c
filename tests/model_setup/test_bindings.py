"""The one lifecycle: a setup bound to a model (or its config) is released when that object is collected:
its orchestrator unregistered from layerzero.ops, its watcher stopped, its release callbacks run."""

from __future__ import annotations

import gc

from layerzero import ops
from layerzero.model_setup import Owner, SetupBindings, build_setup, release

FACTS = {"model_type": "llama", "architectures": ("LlamaForCausalLM",), "name_or_path": "org/m"}


class Config:
    """Stands for a framework's config object (weakly referenceable, one per loaded model)."""


def _setup(prefix: str = "test"):
    return build_setup(FACTS, rules=False, name_prefix=prefix)


def test_build_registers_a_fresh_name_and_the_last_release_unregisters_and_closes():
    setup = _setup()
    other = _setup()
    assert setup.name.startswith("test:llama:") and setup.name != other.name
    assert ops.has_orchestrator(setup.name)
    closed, released = [], []
    setup.orchestrator.close = lambda: closed.append(True)
    setup.on_release.append(lambda: released.append(setup.name))
    setup.retain()
    release(setup)
    assert ops.has_orchestrator(setup.name) and not closed
    release(setup)
    assert not ops.has_orchestrator(setup.name) and closed == [True] and released == [setup.name]
    release(other)


def test_owner_releases_once():
    setup = _setup()
    owner = Owner(setup)
    owner.close()
    owner.close()
    assert setup.users == 0 and not ops.has_orchestrator(setup.name)


def test_orchestrator_unregistered_after_the_model_is_garbage_collected():
    bindings = SetupBindings()
    config = Config()
    setup = bindings.get_or_build(config, _setup)
    assert bindings.get_or_build(config, lambda: (_ for _ in ()).throw(AssertionError("built twice"))) is setup
    assert bindings.get(config) is setup and bindings.setups() == [setup]
    name = setup.name
    del config
    gc.collect()
    assert not ops.has_orchestrator(name)
    assert bindings.setups() == []


def test_bind_replaces_unbind_drops_and_each_claim_is_counted():
    bindings = SetupBindings()
    config = Config()
    first, second = _setup(), _setup()
    bindings.bind(config, first)
    release(first)  # the builder's claim: the binding still holds one
    assert ops.has_orchestrator(first.name)
    bindings.bind(config, second)  # replacing releases the first binding's claim
    assert not ops.has_orchestrator(first.name) and bindings.get(config) is second
    bindings.unbind(config, first)  # not bound any more: a no-op
    assert bindings.get(config) is second
    bindings.unbind(config, second)
    assert bindings.get(config) is None and ops.has_orchestrator(second.name)  # the builder's claim remains
    release(second)
    assert not ops.has_orchestrator(second.name)


def test_a_watching_orchestrator_stops_when_its_model_goes(tmp_path):
    from layerzero.dispatch import DispatchConfig, DispatchMode
    from layerzero.policy import default_policy_path

    policy = tmp_path / "policy.yaml"
    policy.write_text(default_policy_path().read_text())
    cfg = DispatchConfig(mode=DispatchMode.HOT_RELOAD, config_path=str(policy), watch_interval_seconds=0.05)
    bindings = SetupBindings()
    model = Config()
    setup = bindings.get_or_build(model, lambda: build_setup(FACTS, rules=False, dispatch_config=cfg))
    hot = setup.orchestrator.get_dispatcher()
    assert hot.watching
    del model
    gc.collect()
    assert not hot.watching and not ops.has_orchestrator(setup.name)
