"""Whatever the input - random text, random YAML documents, near-valid policies, mutated real configs,
random bytes on disk, arbitrary Python mappings - the loader returns a Policy or raises
ConfigValidationError, never anything else, and never its internal-error fallback."""

from __future__ import annotations

import os
import tempfile
import time

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lz_policy_registry import SEED_YAML, make_registry

from layerzero.errors import ConfigValidationError
from layerzero.policy import Policy, load_policy, parse_policy_text
from layerzero.policy.loader import INTERNAL_ERROR_MARK

REGISTRY = make_registry()
FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check(fn, *args) -> None:
    try:
        policy = fn(*args, registry=REGISTRY)
    except ConfigValidationError as e:
        assert e.problems
        rendered = str(e)
        assert len(rendered) < 200_000
        for p in e.problems:
            assert INTERNAL_ERROR_MARK not in p.message, rendered
            assert "fix:" in p.message, str(p)
        return
    assert isinstance(policy, Policy)


WORDS = st.sampled_from(
    [
        "version", "defaults", "dispatch_rules", "kernel_locks", "kernel_denies", "kernel_allows",
        "fallback_chains", "operation", "conditions", "kernel", "priority", "fallback_policy",
        "default_priority", "lock_mode", "prefer", "strict", "attention.*", "attention.decode", "rms_norm",
        "attention.[", "torch_sdpa", "flash_attention_v2", "liger_rms_norm", "*_debug", "", "batch_size_gte",
        "dtype", "fp16", "platform", "cuda", "seq_len_in", "compute_capability_gte", "8.0", "nope",
    ]
)
SCALARS = (
    st.none() | st.booleans() | st.integers() | st.integers(min_value=-(2**200), max_value=2**200)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12) | WORDS
)
VALUES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(WORDS | st.text(max_size=6), children, max_size=4),
    max_leaves=25,
)


@FUZZ
@given(st.text(max_size=300))
def test_random_text(text):
    check(parse_policy_text, text)


@FUZZ
@given(VALUES)
def test_random_yaml_documents(value):
    check(parse_policy_text, yaml.safe_dump(value, allow_unicode=True))
    check(load_policy, value) if isinstance(value, dict) else None


CONDITIONS = st.dictionaries(
    st.sampled_from(["batch_size_gte", "seq_len_gt", "dtype", "dtype_in", "platform", "is_causal", "head_dim_lt",
                     "compute_capability_gte", "sliding_window", "softcap_ne", "extra", "bogus_gt", "operation"]),
    SCALARS | st.lists(SCALARS, max_size=3),
    max_size=4,
)
RULE = st.fixed_dictionaries(
    {},
    optional={"operation": WORDS | SCALARS, "conditions": CONDITIONS | VALUES, "kernel": WORDS | SCALARS,
              "priority": SCALARS},
)
NEAR_VALID = st.fixed_dictionaries(
    {},
    optional={
        "version": st.just("1.0") | SCALARS,
        "defaults": st.fixed_dictionaries(
            {}, optional={"fallback_policy": WORDS | SCALARS, "default_priority": SCALARS, "lock_mode": WORDS}
        ) | VALUES,
        "dispatch_rules": st.lists(RULE, max_size=4) | VALUES,
        "kernel_locks": st.dictionaries(WORDS, WORDS | SCALARS, max_size=3) | VALUES,
        "kernel_denies": st.lists(WORDS | SCALARS, max_size=3) | VALUES,
        "kernel_allows": st.lists(WORDS | SCALARS, max_size=3) | VALUES,
        "fallback_chains": st.dictionaries(WORDS, st.lists(WORDS | SCALARS, max_size=3) | VALUES, max_size=3),
    },
)


@FUZZ
@given(NEAR_VALID)
def test_near_valid_policies(doc):
    check(load_policy, doc)
    check(parse_policy_text, yaml.safe_dump(doc))


SEED_TEXT = SEED_YAML.read_text()


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(SEED_TEXT)), st.integers(0, 3), st.text(max_size=3)), max_size=4))
def test_mutated_seed(edits):
    text = SEED_TEXT
    for pos, cut, insert in edits:
        pos = min(pos, len(text))
        text = text[:pos] + insert + text[pos + cut:]
    check(parse_policy_text, text)


@FUZZ
@given(st.binary(max_size=400))
def test_random_bytes_on_disk(data):
    fd, path = tempfile.mkstemp(suffix=".yaml")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        check(load_policy, path)
    finally:
        os.unlink(path)


def test_pathological_documents():
    bomb = "a: &a ['x','x','x','x','x','x','x','x']\n" + "".join(
        f"{c}: &{c} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n" for p, c in zip("abcdefgh", "bcdefghi")
    )
    dict_bomb = "a: &a {x: 1, y: 2}\n" + "".join(
        f"{c}: &{c} {{p: *{p}, q: *{p}, r: *{p}, s: *{p}, t: *{p}, u: *{p}}}\n" for p, c in zip("abcdefgh", "bcdefghi")
    )
    long_name = "k" * 1_000_000
    cases = [
        bomb + "dispatch_rules: *i\nkernel_denies: *i\n",
        bomb + "version: *i\ndefaults: {fallback_policy: *i, lock_mode: *i, default_priority: *i}\n",
        dict_bomb + "version: *i\ndispatch_rules: [{operation: *i, kernel: *i, priority: *i, "
        "conditions: {seq_len_in: *i, dtype: *i, batch_size_gte: *i, *i : 1}}]\nkernel_locks: {rms_norm: *i}\n",
        f"{long_name}: 1\nkernel_denies: [{long_name}]\ndispatch_rules: [{{operation: {long_name}, kernel: {long_name}, "
        f"conditions: {{{long_name}: 1, dtype: {long_name}}}}}]\n",
        "kernel_denies: &a [*a]\n",
        "fallback_chains: &m {rms_norm: *m}\n",
        "[" * 3000 + "]" * 3000,
        "{" * 3000,
        "priority: 1" + "0" * 5000 + "\n",
        "dispatch_rules: [{operation: rms_norm, kernel: torch_rms_norm, conditions: {batch_size_gte: 1e999}}]\n",
        "dispatch_rules: [{operation: rms_norm, kernel: torch_rms_norm, conditions: {seq_len_gt: .inf}}]\n",
        "!!python/object:os.system {}\n",
        "version: !!binary aGVsbG8=\n",
        "? [a, b]\n: 1\n",
        "<<: {version: '1'}\n",
        "version: 2024-01-01\n",
        "\ufeffversion: '1'\n",
    ]
    for text in cases:
        start = time.perf_counter()
        check(parse_policy_text, text)
        assert time.perf_counter() - start < 10, text[:80]
    recursive: dict = {}
    recursive["dispatch_rules"] = [recursive]
    check(load_policy, recursive)
    check(load_policy, {1: 2, None: [], ("t",): {"x"}, "kernel_denies": {b"x"}})
