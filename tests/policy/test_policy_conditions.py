"""The condition language: every operator, canonical values, and unknown facts never triggering a rule."""

from __future__ import annotations

import pytest

from layerzero.policy.conditions import compile_condition, compile_conditions, split_key
from layerzero.policy.schema import Problems
from layerzero.context.call_context import SelectionContext


def cond(key, value):
    problems = Problems("t")
    c = compile_condition(key, value, "c", problems)
    assert not problems, [str(p) for p in problems.items]
    return c


CTX = SelectionContext(operation="attention.causal", batch_size=8, seq_len=1024, dtype="bfloat16",
                       device="cuda:0", head_dim=128, compute_capability=(9, 0), is_causal=True)


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("batch_size_gt", 8, False),
        ("batch_size_gt", 7, True),
        ("batch_size_gte", 8, True),
        ("batch_size_gte", 9, False),
        ("batch_size_lt", 8, False),
        ("batch_size_lt", 9, True),
        ("batch_size_lte", 8, True),
        ("batch_size_lte", 7.5, False),
        ("batch_size_eq", 8, True),
        ("batch_size_ne", 8, False),
        ("batch_size_in", [1, 8], True),
        ("batch_size_not_in", [1, 8], False),
        ("batch_size_not_in", [1, 2], True),
        ("batch_size", 8, True),
        ("batch_size", [2, 4], False),
        ("dtype", "bf16", True),
        ("dtype", ["fp16", "torch.bfloat16"], True),
        ("dtype_ne", "bfloat16", False),
        ("platform", "cuda", True),
        ("platform_not_in", ["cpu", "mps"], True),
        ("is_causal", True, True),
        ("is_causal_ne", True, False),
        ("compute_capability_gte", "8.0", True),
        ("compute_capability_gte", 9.0, True),
        ("compute_capability_lt", [9, 0], False),
        ("compute_capability", [9, 0], True),
        ("operation", "attention.causal", True),
    ],
)
def test_operators(key, value, expected):
    assert cond(key, value)(CTX) is expected


def test_canonical_values():
    assert cond("dtype", "fp16").value == "float16"
    assert cond("dtype_in", ["bf16", "half"]).value == frozenset({"bfloat16", "float16"})
    assert cond("compute_capability_gte", "8.9").value == (8, 9)
    assert cond("batch_size_gte", 8.0).value == 8 and isinstance(cond("batch_size_gte", 8.0).value, int)


def test_unknown_facts_do_not_trigger_rules():
    empty = SelectionContext()
    for key, value in [("batch_size_gte", 1), ("batch_size_ne", 8), ("batch_size_not_in", [1]),
                       ("dtype_ne", "float16"), ("compute_capability_lt", "99.0")]:
        assert cond(key, value)(empty) is False, key


def test_null_can_be_asked_for():
    assert cond("sliding_window", None)(SelectionContext()) is True
    assert cond("sliding_window_ne", None)(SelectionContext(sliding_window=128)) is True
    assert cond("attn_mask_in", [None, "bool"])(SelectionContext()) is True
    assert cond("attn_mask_not_in", [None])(SelectionContext(attn_mask="bool")) is True
    assert cond("attn_mask_not_in", [None])(SelectionContext()) is False


def test_split_key_prefers_bare_fields():
    assert split_key("seq_len_k") == ("seq_len_k", None)
    assert split_key("seq_len_k_gte") == ("seq_len_k", "gte")
    assert split_key("dtype_not_in") == ("dtype", "not_in")
    assert split_key("dtype_in") == ("dtype", "in")


def test_compile_conditions_collects_each_problem():
    problems = Problems(None)
    out = compile_conditions({"batch_size_gte": 8, "dtype": "nope", "zzz": 1}, "r.conditions", problems)
    assert [c.key for c in out] == ["batch_size_gte"]
    assert {p.field for p in problems.items} == {"r.conditions.dtype", "r.conditions.zzz"}
