"""MeasuredRanking: measured kernels ordered by time within one policy tier and rule priority; locks and
rules still win; unmeasured kernels keep their priority places; no measurement at all ranks exactly like
priorities."""

from __future__ import annotations

import pytest

from layerzero.context import SelectionContext
from layerzero.registry import KernelSpec
from layerzero.selection import measured_ranking as mr
from layerzero.selection.measured_ranking import MeasuredRanking
from layerzero.selection.ranking import Candidate, PriorityRanking, Ranking
from layerzero.tuning.cost_table import CostTable, Measurement, bucket_for

OP = "attention.prefill"
CTX = SelectionContext(operation=OP, batch_size=1, seq_len=1000, head_dim=64, num_heads=32, num_kv_heads=8,
                       dtype="bfloat16", device="cuda:0", compute_capability=(9, 0), is_causal=True)


def _spec(kid: str, priority: int) -> KernelSpec:
    return KernelSpec(kid, OP, "torch", "layerzero.kernels.reference:attention", priority=priority)


SPECS = {k: _spec(k, p) for k, p in (("fa3", 95), ("sdpa", 90), ("flex", 60), ("math", 10), ("xf", 50))}


def _cand(kid: str, tier: int = 0, rule_prio: int = 0, index: int = 0) -> Candidate:
    spec = SPECS[kid]
    return Candidate(spec, (tier, rule_prio, spec.priority, -index), index)


def _table(**times: float) -> CostTable:
    table = CostTable("sm90")
    for kid, us in times.items():
        table.add(bucket_for(OP, CTX), kid, Measurement(us))
    return table


def _order(ranking, cands, ctx=CTX):
    return [(r.spec.kernel_id, r.source, r.measured_us) for r in ranking.rank(OP, ctx, cands)]


def test_is_a_ranking():
    assert isinstance(MeasuredRanking(_table()), Ranking)


def test_a_fully_measured_group_is_ordered_by_time():
    cands = [_cand("fa3", index=0), _cand("sdpa", index=1), _cand("flex", index=2)]
    got = _order(MeasuredRanking(_table(flex=5.0, sdpa=7.5, fa3=9.0)), cands)
    assert got == [("flex", "measured", 5.0), ("sdpa", "measured", 7.5), ("fa3", "measured", 9.0)]


def test_a_host_bound_call_is_ranked_by_issue_time():
    """Decode-sized calls: the device times (4-8 us) are below what it takes to issue them; the kernel that
    is cheaper to launch wins although its device time is longer."""
    table = CostTable("sm90")
    table.add(bucket_for(OP, CTX), "fa3", Measurement(4.4, host_us=53.0))
    table.add(bucket_for(OP, CTX), "sdpa", Measurement(7.8, host_us=23.0))
    got = _order(MeasuredRanking(table), [_cand("fa3", index=0), _cand("sdpa", index=1)])
    assert got == [("sdpa", "measured", 23.0), ("fa3", "measured", 53.0)]


def test_a_noisy_measurement_ranks_only_where_its_noise_cannot_change_the_order():
    """A timing that never held still is kept, flagged: 25 us +- 40% still beats 85 us, but not 30 us."""
    cands = [_cand("sdpa", index=0), _cand("flex", index=1)]
    decisive = CostTable("sm90")
    decisive.add(bucket_for(OP, CTX), "flex", Measurement(25.0, spread=0.8, noisy=True))
    decisive.add(bucket_for(OP, CTX), "sdpa", Measurement(85.0))
    assert [k for k, *_ in _order(MeasuredRanking(decisive), cands)] == ["flex", "sdpa"]
    close = CostTable("sm90")
    close.add(bucket_for(OP, CTX), "flex", Measurement(25.0, spread=0.8, noisy=True))
    close.add(bucket_for(OP, CTX), "sdpa", Measurement(30.0))
    got = _order(MeasuredRanking(close), cands)
    assert [k for k, *_ in got] == ["sdpa", "flex"] and {src for _, src, _ in got} == {"priority"}


def test_unmeasured_kernels_keep_their_places_and_measured_ones_are_ordered_among_theirs():
    """Times measured without a candidate (not installed then, or dropped as noisy) cannot place it: it keeps
    its place in the priority order, so a faster kernel the table missed is never pushed down; the measured
    kernels are ordered by time among the places they hold (installing a backend the table lacks must not
    throw away the measurements of the others)."""
    cands = [_cand("fa3", index=0), _cand("sdpa", index=1), _cand("flex", index=2), _cand("math", index=3),
             _cand("xf", index=4)]
    priority = [g[0] for g in _order(PriorityRanking(), cands)]
    assert priority == ["fa3", "sdpa", "flex", "xf", "math"]
    got = _order(MeasuredRanking(_table(flex=5.0, sdpa=7.5)), cands)
    assert got == [("fa3", "priority", None), ("flex", "measured", 5.0), ("sdpa", "measured", 7.5),
                   ("xf", "priority", None), ("math", "priority", None)]
    # the measured kernels hold the first and the last place: the cheaper takes the first
    got = _order(MeasuredRanking(_table(fa3=9.0, math=2.0)), cands)
    assert [k for k, *_ in got] == ["math", "sdpa", "flex", "xf", "fa3"]
    assert [src for _, src, _ in got] == ["measured", "priority", "priority", "priority", "measured"]


def test_one_measured_kernel_among_unmeasured_ones_changes_nothing():
    cands = [_cand("fa3", index=0), _cand("sdpa", index=1), _cand("flex", index=2)]
    got = _order(MeasuredRanking(_table(flex=1.0)), cands)
    assert got == [("fa3", "priority", None), ("sdpa", "priority", None), ("flex", "priority", 1.0)]


def test_a_noisy_order_among_the_measured_keeps_the_whole_group_in_policy_order():
    table = CostTable("sm90")
    table.add(bucket_for(OP, CTX), "flex", Measurement(25.0, spread=0.8, noisy=True))
    table.add(bucket_for(OP, CTX), "sdpa", Measurement(30.0))
    got = _order(MeasuredRanking(table), [_cand("fa3", index=0), _cand("sdpa", index=1), _cand("flex", index=2)])
    assert [k for k, *_ in got] == ["fa3", "sdpa", "flex"] and {src for _, src, _ in got} == {"priority"}


def test_locks_and_rule_tiers_still_win():
    cands = [_cand("math", tier=2), _cand("sdpa", tier=1, rule_prio=10), _cand("xf", tier=1, rule_prio=10),
             _cand("fa3", tier=1, rule_prio=5), _cand("flex")]
    got = _order(MeasuredRanking(_table(flex=1.0, xf=2.0, sdpa=3.0, fa3=0.5, math=900.0)), cands)
    assert [k for k, _, _ in got] == ["math", "xf", "sdpa", "fa3", "flex"]
    assert all(source == "measured" for _, source, _ in got)


def test_no_measurement_ranks_like_priority_ranking():
    cands = [_cand("sdpa", tier=1, rule_prio=3), _cand("fa3"), _cand("math"), _cand("flex", tier=1, rule_prio=3)]
    measured = MeasuredRanking(_table()).rank(OP, CTX, cands)
    expected = PriorityRanking().rank(OP, CTX, cands)
    assert [r.spec.kernel_id for r in measured] == [r.spec.kernel_id for r in expected]
    assert [r.source for r in measured] == [r.source for r in expected]


def test_other_device_class_or_far_bucket_has_no_measurement():
    ranking = MeasuredRanking(lambda cls: _table(math=1.0, fa3=2.0) if cls == "sm90" else None)
    cands = [_cand("fa3"), _cand("math")]
    assert _order(ranking, cands)[0][0] == "math"
    ampere = CTX.replace(compute_capability=(8, 0))
    assert [k for k, _, _ in _order(ranking, cands, ampere)] == ["fa3", "math"]
    far = CTX.replace(seq_len=32000, seq_len_q=32000, seq_len_k=32000)
    assert [k for k, _, _ in _order(ranking, cands, far)] == ["fa3", "math"]


def test_deterministic_on_equal_times_and_memoised():
    looked = []
    table = _table(sdpa=2.0, flex=2.0)

    def source(cls):
        looked.append(cls)
        return table

    ranking = MeasuredRanking(source)
    cands = [_cand("sdpa"), _cand("flex")]
    first = _order(ranking, cands)
    assert first == _order(ranking, list(reversed(cands)))  # ties broken by kernel id, not input order
    assert [k for k, _, _ in first] == ["flex", "sdpa"]
    assert len(looked) == 1  # the same candidate set in another order: a memo hit
    ranking.clear()
    _order(ranking, cands)
    assert len(looked) == 2


def test_measured_ranking_for_device_is_shared_and_preloaded(monkeypatch, tmp_path):
    monkeypatch.setenv("LAYERZERO_TUNE_CACHE", str(tmp_path / "cache.json"))
    monkeypatch.setattr(mr, "_shared", {})
    a = mr.measured_ranking_for_device("cpu")
    assert a is mr.measured_ranking_for_device("cpu")
    assert mr.measured_ranking_for_device("cpu", scope="m") is not a
    assert a.source._tables.keys() == {"cpu"}  # loaded now, not on the first selection


@pytest.mark.parametrize("tier", [0, 1])
def test_sources_name_policy_for_rule_chosen_unmeasured(tier):
    got = _order(MeasuredRanking(_table()), [_cand("fa3", tier=tier)])
    assert got[0][1] == ("policy" if tier else "priority")


def test_rank_note_and_lookup_for_explain():
    ranking = MeasuredRanking(_table(sdpa=7.25))
    ranked = ranking.rank(OP, CTX, [_cand("sdpa"), _cand("fa3")])  # fa3 unmeasured: priority order, time shown
    assert [mr.rank_note(r) for r in ranked] == ["priority", "priority 7.2 us"]
    ranked = MeasuredRanking(_table(sdpa=7.25, fa3=9.0)).rank(OP, CTX, [_cand("sdpa"), _cand("fa3")])
    assert [mr.rank_note(r) for r in ranked] == ["measured 7.2 us", "measured 9.0 us"]
    bucket, times = ranking.lookup(OP, CTX.replace(seq_len=1500, seq_len_q=1500, seq_len_k=1500))
    assert bucket == bucket_for(OP, CTX) and times["sdpa"].median_us == 7.25  # the nearest bucket
