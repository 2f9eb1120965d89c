"""Invariants of PolicyEngine.decide over random valid policies and contexts."""

from __future__ import annotations

from fnmatch import fnmatchcase

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lz_policy_registry import make_registry

from layerzero.operations import OPERATIONS, matches
from layerzero.policy import PolicyEngine, load_policy
from layerzero.context.call_context import SelectionContext

REGISTRY = make_registry()
IDS = sorted(REGISTRY.ids())
NAMES = sorted(REGISTRY.names())
OPS = st.sampled_from(OPERATIONS)
OP_PATTERNS = st.sampled_from([*OPERATIONS, "attention.*", "*norm", "*"])
KERNEL_GLOBS = st.sampled_from(["flash_*", "*_attention", "torch_*", "*_debug", "reference_*", "*sdpa*", *NAMES[:8]])


@st.composite
def policies(draw):
    rules = []
    for _ in range(draw(st.integers(0, 4))):
        op = draw(OPS)
        kernel = draw(st.sampled_from([k.kernel_id for k in REGISTRY.get_by_operation(op)]))
        conditions = draw(st.dictionaries(
            st.sampled_from(["batch_size_gte", "seq_len_lt", "head_dim"]), st.integers(1, 64), max_size=2
        ))
        rules.append({"operation": op, "kernel": kernel, "conditions": conditions,
                      "priority": draw(st.integers(-5, 5))})
    locks = {}
    for op in draw(st.lists(OPS, max_size=2, unique=True)):
        locks[op] = draw(st.sampled_from([k.kernel_id for k in REGISTRY.get_by_operation(op)]))
    denies = draw(st.lists(KERNEL_GLOBS, max_size=2))
    # keep locks valid: drop locks on denied kernels
    locks = {op: k for op, k in locks.items()
             if not any(fnmatchcase(n, g) for g in denies for n in REGISTRY.get(k).names)}
    return {
        "version": "p",
        "defaults": {"lock_mode": draw(st.sampled_from(["prefer", "strict"]))},
        "dispatch_rules": rules,
        "kernel_locks": locks,
        "kernel_denies": denies,
        "kernel_allows": draw(st.lists(KERNEL_GLOBS, max_size=2)),
    }


CONTEXTS = st.builds(
    SelectionContext,
    batch_size=st.none() | st.integers(1, 64),
    seq_len=st.none() | st.integers(1, 64),
    head_dim=st.none() | st.sampled_from([32, 64]),
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policies(), OPS, CONTEXTS, st.data())
def test_decide_invariants(doc, op, ctx, data):
    policy = load_policy(doc, REGISTRY)
    eng = PolicyEngine(policy, REGISTRY)
    cands = REGISTRY.get_by_operation(op)
    runnable = set(data.draw(st.lists(st.sampled_from([k.kernel_id for k in cands]), unique=True)))
    out = eng.decide(op, cands, ctx, runnable)
    assert [v.kernel for v in out] == cands
    lock = policy.lock_for(op)
    for v in out:
        names = v.kernel.names
        if any(fnmatchcase(n, g) for g in policy.denies for n in names):
            assert not v.allowed and v.reason.startswith("denied by kernel_denies")
        if v.allowed and policy.allows and lock is None:
            assert v.kernel_id in policy.explicit_kernels or any(
                fnmatchcase(n, g) for g in policy.allows for n in names
            )
        if v.allowed and v.rule_index is not None:
            rule = next(r for r in policy.rules if r.index == v.rule_index)
            assert rule.kernel == v.kernel_id and matches(rule.operation, op) and rule.holds(ctx)
        if not v.allowed:
            assert v.reason
    allowed = [v for v in out if v.allowed]
    if lock is not None:
        locked_kernel = lock[1]
        if locked_kernel in runnable:
            assert [v.kernel_id for v in allowed] == [locked_kernel] and allowed[0].locked
        elif policy.defaults.lock_mode == "strict":
            assert allowed == []
        else:
            assert all("ignored" in v.reason for v in allowed)
    # ranks: rule tier above no-rule tier; scores agree with ranks
    if allowed:
        top = max(allowed, key=lambda v: v.rank)
        if any(v.rule_index is not None for v in allowed) and not top.locked:
            assert top.rule_index is not None
    scores = dict((k.kernel_id, s) for k, s in eng.score_kernels(cands, ctx, op, runnable))
    for a in allowed:
        for b in allowed:
            if a.rank > b.rank:
                assert scores[a.kernel_id] > scores[b.kernel_id]
