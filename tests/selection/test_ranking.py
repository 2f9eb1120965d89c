"""Rankings: each built-in one orders the eligible kernels as documented, the engine checks a ranking's
answer, and a ranking plugged in through DispatchConfig.ranking decides the dispatcher's choice and shows
up in ``explain`` (source, measured time)."""

from __future__ import annotations

import pytest
import torch

from layerzero.dispatch import DispatchConfig, Dispatcher, StaticDispatcherBuilder
from layerzero.dispatch.autotune import AutotuneRanking
from layerzero.errors import ConfigValidationError, LayerZeroError
from layerzero.policy import PolicyEngine, load_policy
from layerzero.registry import BackendRegistry, BackendSpec, KernelRegistry, KernelSpec
from layerzero.selection import (
    CallRanking,
    Candidate,
    PriorityRanking,
    RankedKernel,
    Ranking,
    RegistrationOrder,
    SelectionContext,
    SelectionEngine,
    default_ranking,
)

CTX = SelectionContext(operation="rms_norm", device="cpu", dtype="float32", hidden_size=8)


def norm(kid: str, priority: int) -> KernelSpec:
    return KernelSpec(kid, "rms_norm", "torch", "layerzero.kernels.reference:rms_norm", priority=priority)


@pytest.fixture
def reg():
    return KernelRegistry([norm("mid", 50), norm("high", 90), norm("low", 10)])


@pytest.fixture
def backends():
    return BackendRegistry([BackendSpec("torch", modules=("torch",))])


class Slowest:
    """Test ranking: lowest priority first, with a made-up measured time per kernel."""

    name = "slowest"

    def rank(self, operation, context, candidates):
        ordered = sorted(candidates, key=lambda c: c.spec.priority)
        return [RankedKernel(c.spec, "measured", float(c.spec.priority)) for c in ordered]


def test_default_ranking_is_measured_cost_and_shared():
    from layerzero.selection.measured_ranking import MeasuredRanking

    assert isinstance(default_ranking(), MeasuredRanking) and default_ranking() is default_ranking()
    assert isinstance(PriorityRanking(), Ranking) and isinstance(RegistrationOrder(), Ranking)


def test_default_ranking_without_measurements_orders_like_priority(reg):
    """No cost table for the call's device class (a CPU here, none shipped): the policy's rank decides."""
    cands = [Candidate(reg.get("mid"), (0, 0, 50, 0), 0), Candidate(reg.get("low"), (0, 0, 10, 0), 1),
             Candidate(reg.get("high"), (0, 0, 90, 0), 2)]
    got = [r.spec.kernel_id for r in default_ranking().rank("rms_norm", CTX, cands)]
    assert got == [r.spec.kernel_id for r in PriorityRanking().rank("rms_norm", CTX, cands)] == ["high", "mid", "low"]


def test_priority_ranking_orders_by_policy_rank_and_names_its_source(reg):
    cands = [Candidate(reg.get("mid"), (0, 0, 50, 0), 0), Candidate(reg.get("low"), (2, 0, 10, 0), 1),
             Candidate(reg.get("high"), (0, 0, 90, 0), 2)]
    ranked = PriorityRanking().rank("rms_norm", CTX, cands)
    assert [(r.spec.kernel_id, r.source) for r in ranked] == [("low", "policy"), ("high", "priority"), ("mid", "priority")]


def test_registration_order_ignores_priority(reg):
    cands = [Candidate(reg.get(k), (0, 0, reg.get(k).priority, 0), i) for i, k in enumerate(["low", "high", "mid"])]
    ranked = RegistrationOrder().rank("rms_norm", CTX, list(reversed(cands)))
    assert [r.spec.kernel_id for r in ranked] == ["low", "high", "mid"]
    assert {r.source for r in ranked} == {"registration order"}


def test_engine_uses_its_ranking_before_the_policy_fallback_chain(reg, backends):
    policy = load_policy({"version": "1", "fallback_chains": {"rms_norm": ["high"]}}, registry=reg)
    eng = SelectionEngine(reg, backends, PolicyEngine(policy, reg), ranking=Slowest())
    assert [k.kernel_id for k in eng.plan("rms_norm", CTX).kernels] == ["low", "high", "mid"]


def test_explain_shows_source_and_measured_time(reg, backends):
    exp = SelectionEngine(reg, backends, ranking=Slowest()).explain("rms_norm", CTX)
    assert exp.chosen == "low"
    low = exp["low"]
    assert (low.source, low.measured_us) == ("measured", 10.0)
    d = low.as_dict()
    assert d["source"] == "measured" and d["measured_us"] == 10.0
    assert "by=measured measured=10.0us" in str(exp)
    plain = SelectionEngine(reg, backends).explain("rms_norm", CTX)
    assert plain["high"].source == "priority" and "measured_us" not in plain["high"].as_dict()


def test_a_ranking_that_drops_a_kernel_is_refused(reg, backends):
    class Dropper:
        name = "dropper"

        def rank(self, operation, context, candidates):
            return [RankedKernel(candidates[0].spec)]

    with pytest.raises(LayerZeroError, match="dropper"):
        SelectionEngine(reg, backends, ranking=Dropper()).plan("rms_norm", CTX)


def test_dispatch_config_ranking_decides_the_dispatchers_choice(reg):
    d = Dispatcher(DispatchConfig(ranking=Slowest()), kernel_registry=reg)
    assert d.dispatch("rms_norm", {"x": torch.randn(2, 8), "weight": torch.ones(8)}).kernel_id == "low"
    assert d.explain("rms_norm", CTX)["low"].measured_us == 10.0
    assert Dispatcher(DispatchConfig(), kernel_registry=reg).ranking.name == "measured"
    with pytest.raises(ConfigValidationError, match="ranking"):
        DispatchConfig(ranking=object())


def test_static_dispatch_ranks_by_registration(reg):
    d = StaticDispatcherBuilder().with_kernel(reg.get("low"), default=True).with_kernel(reg.get("high")).build(
        kernel_registry=reg)
    assert isinstance(d.ranking, RegistrationOrder)
    assert d.select("rms_norm", {"x": torch.randn(2, 8), "weight": torch.ones(8)}).kernel_id == "low"


def test_autotune_ranking_measures_on_the_call(reg, tmp_path):
    from layerzero.tuning import TuningCache

    ranking = AutotuneRanking(DispatchConfig(), reg, TuningCache(tmp_path / "t.json", versions={"torch": "1"}))
    assert isinstance(ranking, CallRanking) and not isinstance(PriorityRanking(), CallRanking)
