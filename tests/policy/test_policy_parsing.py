"""layerzero.policy.parsing: policy text to data, the nesting guard and the hashes that name a policy."""

from __future__ import annotations

import hashlib

from layerzero.policy.parsing import MAX_FLOW_DEPTH, flow_depth_exceeds, mapping_hash, parse_yaml, text_hash
from layerzero.policy.schema import MISSING, Problems


def test_flow_depth_counts_brackets_outside_quotes_and_comments():
    deep = "[" * (MAX_FLOW_DEPTH + 1) + "]" * (MAX_FLOW_DEPTH + 1)
    assert flow_depth_exceeds(deep, MAX_FLOW_DEPTH)
    assert not flow_depth_exceeds(f"a: '{deep}'\n", MAX_FLOW_DEPTH)
    assert not flow_depth_exceeds(f"a: 1  # {deep}\n", MAX_FLOW_DEPTH)
    assert not flow_depth_exceeds("[[1], [2]]" * 100, MAX_FLOW_DEPTH)  # many, but shallow


def test_parse_yaml_reports_instead_of_raising():
    problems = Problems("p.yaml")
    assert parse_yaml("a: [1\n", problems) is MISSING
    assert len(problems) == 1 and "YAML syntax error" in problems.items[0].message
    problems = Problems(None)
    assert parse_yaml("# only a comment\n", problems) is MISSING and "empty" in problems.items[0].message
    problems = Problems(None)
    assert parse_yaml("a: 1\na: 2\n", problems) == {"a": 2}
    assert "duplicate key 'a' (lines 1 and 2)" in problems.items[0].message


def test_mapping_hash_ignores_key_order_and_survives_cycles():
    assert mapping_hash({"a": 1, "b": [1, 2]}) == mapping_hash({"b": [1, 2], "a": 1})
    assert mapping_hash({"a": 1}) != mapping_hash({"a": "1"})
    loop: list = []
    loop.append(loop)
    assert len(mapping_hash({"a": loop})) == 64
    assert mapping_hash({"n": 10**5000}) != mapping_hash({"n": 10**5000 + 1})  # no str-digit limit


def test_text_hash_is_the_sha256_of_the_text():
    assert text_hash("version: '1.0'\n") == hashlib.sha256(b"version: '1.0'\n").hexdigest()
    assert len(text_hash("\ud800")) == 64  # a lone surrogate does not make hashing fail
