"""One test per class of config mistake: each must surface as a ConfigValidationError whose problem names
the field path, carries the offending value, and says how to fix it."""

from __future__ import annotations

import textwrap

import pytest

from layerzero.errors import ConfigValidationError
from layerzero.policy import load_policy, parse_policy_text, validate_policy
from layerzero.policy.loader import INTERNAL_ERROR_MARK


def problems_of(text: str, registry, source: str = "policy.yaml"):
    with pytest.raises(ConfigValidationError) as info:
        parse_policy_text(textwrap.dedent(text), source=source, registry=registry)
    err = info.value
    assert err.source == source
    for p in err.problems:
        assert p.source == source
        assert INTERNAL_ERROR_MARK not in p.message
        assert "fix:" in p.message, p
    return err.problems


def only(problems, field):
    hits = [p for p in problems if p.field == field]
    assert hits, f"no problem at {field}: {[str(p) for p in problems]}"
    return hits[0]


# ------------------------------------------------------------------------------------------ document level
@pytest.mark.parametrize("text", ["", "   \n", "# nothing but a comment\n"])
def test_empty_document(text, registry):
    (p,) = problems_of(text, registry)
    assert p.field == "<document>" and "empty" in p.message


def test_non_mapping_document(registry):
    (p,) = problems_of("- version\n- 1\n", registry)
    assert p.field == "<document>" and p.value == ["version", 1] and "mapping" in p.message


def test_yaml_syntax_error_names_line(registry):
    (p,) = problems_of("version: '1.0'\ndispatch_rules: [\n  {operation: rms_norm\n", registry)
    assert p.field == "<document>" and "YAML syntax error" in p.message and p.value.startswith("line ")


def test_multiple_documents(registry):
    (p,) = problems_of("version: '1'\n---\nversion: '2'\n", registry)
    assert "one YAML document" in p.message and p.value == "line 2, column 1"


def test_unknown_top_level_key_suggests(registry):
    p = only(problems_of("version: '1'\nkernel_deny: ['*_debug']\n", registry), "kernel_deny")
    assert p.value == "kernel_deny" and "did you mean 'kernel_denies'" in p.message


def test_duplicate_keys_are_reported_with_lines(registry):
    probs = problems_of(
        """
        version: "1"
        dispatch_rules:
          - operation: rms_norm
            kernel: torch_rms_norm
            kernel: triton_rms_norm
        """,
        registry,
    )
    p = only(probs, "dispatch_rules[0].kernel")
    assert p.value == "kernel" and "duplicate key" in p.message and "lines 5 and 6" in p.message


def test_duplicate_operation_keys_use_bracket_paths(registry):
    probs = problems_of(
        "kernel_locks:\n  attention.prefill: torch_sdpa\n  attention.prefill: reference_attention\n", registry
    )
    assert only(probs, "kernel_locks['attention.prefill']").value == "attention.prefill"


def test_version_must_be_a_string(registry):
    p = only(problems_of("version: 1.0\n", registry), "version")
    assert p.value == 1.0 and 'version: "1.0"' in p.message


# ------------------------------------------------------------------------------------------ defaults
def test_defaults_types(registry):
    probs = problems_of(
        """
        defaults:
          fallback_policy: torch_sdpaa
          default_priority: high
          lock_mode: strik
          fallback: x
        """,
        registry,
    )
    fp = only(probs, "defaults.fallback_policy")
    assert fp.value == "torch_sdpaa" and "did you mean 'torch_sdpa'" in fp.message
    assert only(probs, "defaults.default_priority").value == "high"
    lm = only(probs, "defaults.lock_mode")
    assert lm.value == "strik" and "'strict'" in lm.message
    assert only(probs, "defaults.fallback").value == "fallback"


def test_defaults_not_a_mapping(registry):
    p = only(problems_of("defaults: [torch_sdpa]\n", registry), "defaults")
    assert p.value == ["torch_sdpa"] and "mapping" in p.message


def test_priority_bounds(registry):
    probs = problems_of(
        """
        dispatch_rules:
          - {operation: rms_norm, kernel: torch_rms_norm, priority: 100000000000000000000000}
          - {operation: rms_norm, kernel: torch_rms_norm, priority: 1.5}
          - {operation: rms_norm, kernel: torch_rms_norm, priority: true}
        """,
        registry,
    )
    assert only(probs, "dispatch_rules[0].priority").value == 10**23
    assert only(probs, "dispatch_rules[1].priority").value == 1.5
    assert only(probs, "dispatch_rules[2].priority").value is True


# ------------------------------------------------------------------------------------------ kernels
def test_unknown_kernel_everywhere_with_suggestions(registry):
    probs = problems_of(
        """
        dispatch_rules:
          - {operation: "attention.*", kernel: flash_atention_v2}
        kernel_locks: {attention.prefill: flash_attn_v9}
        fallback_chains: {rms_norm: [torch_rms_nrm]}
        """,
        registry,
    )
    rule = only(probs, "dispatch_rules[0].kernel")
    assert rule.value == "flash_atention_v2" and "did you mean 'flash_attention_v2'" in rule.message
    assert only(probs, "kernel_locks['attention.prefill']").value == "flash_attn_v9"
    chain = only(probs, "fallback_chains.rms_norm[0]")
    assert chain.value == "torch_rms_nrm" and "'torch_rms_norm'" in chain.message


def test_kernel_must_be_a_string(registry):
    p = only(problems_of("dispatch_rules:\n  - {operation: rms_norm, kernel: 7}\n", registry), "dispatch_rules[0].kernel")
    assert p.value == 7 and "string" in p.message


def test_kernel_must_serve_the_operation(registry):
    probs = problems_of(
        """
        dispatch_rules:
          - {operation: "attention.*", kernel: liger_rms_norm}
        kernel_locks: {rms_norm: torch_sdpa}
        fallback_chains: {attention.decode: [flashinfer_prefill_attention]}
        """,
        registry,
    )
    p = only(probs, "dispatch_rules[0].kernel")
    assert p.value == "liger_rms_norm" and "does not implement attention.*" in p.message
    lock = only(probs, "kernel_locks.rms_norm")
    assert lock.value == "torch_sdpa" and "torch_sdpa (torch_sdpa_attention)" in lock.message
    assert only(probs, "fallback_chains['attention.decode'][0]").value == "flashinfer_prefill_attention"


def test_rule_shape_errors(registry):
    probs = problems_of(
        """
        dispatch_rules:
          - 5
          - {conditions: {}}
          - {operation: rms_norm, kernel: torch_rms_norm, when: always}
        """,
        registry,
    )
    assert only(probs, "dispatch_rules[0]").value == 5
    assert "needs an operation" in only(probs, "dispatch_rules[1].operation").message
    assert "needs a kernel" in only(probs, "dispatch_rules[1].kernel").message
    assert only(probs, "dispatch_rules[2].when").value == "when"


def test_rules_must_be_a_list(registry):
    p = only(problems_of("dispatch_rules: {operation: rms_norm}\n", registry), "dispatch_rules")
    assert p.value == {"operation": "rms_norm"} and "list" in p.message


# ------------------------------------------------------------------------------------------ operations
def test_operation_glob_matching_nothing(registry):
    p = only(
        problems_of("dispatch_rules:\n  - {operation: atention.*, kernel: torch_sdpa}\n", registry),
        "dispatch_rules[0].operation",
    )
    assert p.value == "atention.*" and "matches no known operation" in p.message and "did you mean" in p.message


def test_operation_glob_malformed(registry):
    probs = problems_of(
        """
        dispatch_rules:
          - {operation: "attention.[causal", kernel: torch_sdpa}
          - {operation: "", kernel: torch_sdpa}
        """,
        registry,
    )
    assert "unbalanced '['" in only(probs, "dispatch_rules[0].operation").message
    assert only(probs, "dispatch_rules[1].operation").value == ""


# ------------------------------------------------------------------------------------------ conditions
def test_unknown_condition_field_suggests(registry):
    probs = problems_of(
        "dispatch_rules:\n  - {operation: rms_norm, kernel: torch_rms_norm, conditions: {batch_sise_gte: 8}}\n",
        registry,
    )
    p = only(probs, "dispatch_rules[0].conditions.batch_sise_gte")
    assert p.value == 8 and "did you mean 'batch_size_gte'" in p.message


def test_extra_field_is_not_a_condition(registry):
    probs = problems_of(
        "dispatch_rules:\n  - {operation: rms_norm, kernel: torch_rms_norm, conditions: {extra: 1}}\n", registry
    )
    assert "cannot be used in conditions" in only(probs, "dispatch_rules[0].conditions.extra").message


@pytest.mark.parametrize(
    "key, value, needle",
    [
        ("batch_size_gte", "big", "is a number"),
        ("batch_size_gte", ".nan", "NaN"),
        ("batch_size_gte", "100000000000000000000000000", "out of range"),
        ("batch_size_gte", "null", "cannot be compared with null"),
        ("dtype_gt", "float16", "needs a numeric field"),
        ("seq_len_in", "5", "needs a list"),
        ("seq_len_in", "[]", "empty list"),
        ("head_dim_lt", "[64]", "compares with one value"),
        ("dtype", "fp17", "unknown dtype"),
        ("platform", "cdua", "did you mean 'cuda'"),
        ("is_causal", "yes please", "boolean"),
        ("is_causal", "null", "never null"),
        ("compute_capability_gte", "eight", "compute capability"),
        ("device", "3", "is a string"),
        ("attn_mask", "float", "unknown attn_mask"),
    ],
)
def test_condition_value_types(registry, key, value, needle):
    text = f"dispatch_rules:\n  - operation: 'attention.*'\n    kernel: torch_sdpa\n    conditions: {{{key}: {value}}}\n"
    probs = problems_of(text, registry)
    hits = [p for p in probs if p.field.startswith(f"dispatch_rules[0].conditions.{key}")]
    assert hits, [str(p) for p in probs]
    assert needle in hits[0].message, str(hits[0])


def test_conditions_not_a_mapping(registry):
    probs = problems_of(
        "dispatch_rules:\n  - {operation: rms_norm, kernel: torch_rms_norm, conditions: [batch_size_gte]}\n", registry
    )
    assert only(probs, "dispatch_rules[0].conditions").value == ["batch_size_gte"]


# ------------------------------------------------------------------------------------------ globs
def test_bad_kernel_globs(registry):
    probs = problems_of(
        """
        kernel_denies: ["", "flash_[attn", " torch_*", 3]
        kernel_allows: "flash_*"
        """,
        registry,
    )
    assert "empty glob" in only(probs, "kernel_denies[0]").message
    assert only(probs, "kernel_denies[1]").value == "flash_[attn"
    assert "whitespace" in only(probs, "kernel_denies[2]").message
    assert only(probs, "kernel_denies[3]").value == 3
    allow = only(probs, "kernel_allows")
    assert allow.value == "flash_*" and "must be a list" in allow.message


# ------------------------------------------------------------------------------------------ conflicts
def test_lock_deny_conflict(registry):
    probs = problems_of(
        """
        kernel_denies: ["*_debug", "attn_*"]
        kernel_locks: {"attention.*": attn_experimental}
        """,
        registry,
    )
    lock = only(probs, "kernel_locks['attention.*']")
    assert lock.value == "attn_experimental" and "kernel_denies[1] 'attn_*'" in lock.message


def test_denies_win_over_rules_chains_and_fallback_policy_with_warnings(registry):
    # Per-model fragments merged over a base policy deny kernels the base names: that must stay loadable.
    policy = parse_policy_text(
        textwrap.dedent(
            """
            defaults: {fallback_policy: rms_norm_debug}
            kernel_denies: ["*_debug"]
            dispatch_rules: [{operation: rms_norm, kernel: rms_norm_debug}, {operation: rms_norm, kernel: torch_rms_norm}]
            fallback_chains: {rms_norm: [torch_rms_norm, rms_norm_debug]}
            """
        ),
        registry=registry,
    )
    assert [r.index for r in policy.rules] == [1]
    assert policy.fallback_chain("rms_norm") == ("torch_rms_norm",)
    assert len(policy.warnings) == 3
    assert policy.warnings[0].startswith("defaults.fallback_policy: kernel rms_norm_debug is denied by kernel_denies[0]")
    assert any(w.startswith("dispatch_rules[0].kernel:") for w in policy.warnings)
    assert any(w.startswith("fallback_chains.rms_norm[1]:") for w in policy.warnings)


def test_ambiguous_glob_locks(registry):
    probs = problems_of(
        "kernel_locks:\n  'attention.*': torch_sdpa\n  'attention.c*': torch_flex_attention\n", registry
    )
    p = only(probs, "kernel_locks['attention.c*']")
    assert "attention.causal, attention.cross" in p.message and p.value == "torch_flex_attention"


def test_exact_lock_resolves_glob_overlap(registry):
    policy = parse_policy_text(
        "kernel_locks:\n  'attention.*': torch_sdpa\n  attention.decode: flashinfer_decode\n", registry=registry
    )
    assert policy.lock_for("attention.decode") == ("attention.decode", "flashinfer_decode_attention")
    assert policy.lock_for("attention.causal") == ("attention.*", "torch_sdpa_attention")


def test_chain_shape_errors(registry):
    probs = problems_of(
        """
        fallback_chains:
          rms_norm: [torch_rms_norm, torch_rms_norm]
          swiglu: []
          rope: torch_rope
        """,
        registry,
    )
    assert "twice" in only(probs, "fallback_chains.rms_norm[1]").message
    assert "empty fallback chain" in only(probs, "fallback_chains.swiglu").message
    assert only(probs, "fallback_chains.rope").value == "torch_rope"


# ------------------------------------------------------------------------------------------ collection
def test_every_problem_is_collected(registry):
    probs = problems_of(
        """
        version: 2
        defaults: {lock_mode: maybe}
        dispatch_rules:
          - {operation: nope, kernel: nope, priority: x, conditions: {nope: 1}}
        kernel_denies: [""]
        """,
        registry,
    )
    fields = {p.field for p in probs}
    assert {
        "version",
        "defaults.lock_mode",
        "dispatch_rules[0].operation",
        "dispatch_rules[0].kernel",
        "dispatch_rules[0].priority",
        "dispatch_rules[0].conditions.nope",
        "kernel_denies[0]",
    } <= fields


def test_error_message_renders_file_field_and_value(registry):
    with pytest.raises(ConfigValidationError) as info:
        parse_policy_text("kernel_denies: ['']\n", source="conf/k.yaml", registry=registry)
    text = str(info.value)
    assert "conf/k.yaml: kernel_denies[0]" in text and "(got '')" in text


# ------------------------------------------------------------------------------------------ files and sources
def test_missing_file(tmp_path, registry):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigValidationError) as info:
        load_policy(path, registry)
    (p,) = info.value.problems
    assert p.source == str(path) and "not found" in p.message


def test_directory_instead_of_file(tmp_path, registry):
    with pytest.raises(ConfigValidationError) as info:
        load_policy(tmp_path, registry)
    assert "directory" in info.value.problems[0].message


def test_binary_file(tmp_path, registry):
    path = tmp_path / "garbage.yaml"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ConfigValidationError) as info:
        load_policy(str(path), registry)
    assert "not UTF-8" in info.value.problems[0].message


def test_mapping_source_and_wrong_source_type(registry):
    with pytest.raises(ConfigValidationError) as info:
        load_policy({"kernel_denies": "x"}, registry)
    assert info.value.problems[0].field == "kernel_denies"
    with pytest.raises(ConfigValidationError):
        load_policy(42, registry)  # type: ignore[arg-type]


def test_validate_policy_lists_problems(tmp_path, registry):
    good = tmp_path / "good.yaml"
    good.write_text("version: '1'\n")
    assert validate_policy(good, registry) == []
    assert validate_policy({"version": 1}, registry)[0].field == "version"


def test_yaml_text_passed_as_a_path_gets_a_hint(registry):
    with pytest.raises(ConfigValidationError) as info:
        load_policy("version: '1'\nkernel_denies: []\n", registry)
    (p,) = info.value.problems
    assert "parse_policy_text" in p.message and info.value.source == "<not a path>"


def test_unmatched_allow_and_exact_deny_names_warn(registry):
    policy = parse_policy_text(
        "kernel_allows: ['flash_atn_*', 'torch_sdpa']\nkernel_denies: ['*_experimental', 'liger_rms_nrm', 'x_*']\n",
        registry=registry,
    )
    deny, allow = policy.warnings
    assert deny.startswith("kernel_denies[1]: 'liger_rms_nrm' matches no registered kernel id or alias (did you "
                           "mean 'liger_rms_norm'")
    assert allow.startswith("kernel_allows[0]: 'flash_atn_*' matches no registered kernel id or alias")


def test_named_pipe_as_policy_path_is_rejected_without_blocking(tmp_path, registry):
    import os
    import time

    fifo = tmp_path / "policy.yaml"
    os.mkfifo(fifo)
    start = time.perf_counter()
    with pytest.raises(ConfigValidationError) as info:
        load_policy(str(fifo), registry)
    assert time.perf_counter() - start < 5  # the unguarded expansion takes minutes; a generous bound for a loaded CI machine
    (p,) = info.value.problems
    assert "named pipe" in p.message and "fix:" in p.message and p.source == str(fifo)


def test_alias_bomb_policy_file_is_rejected_with_a_short_message(tmp_path, registry):
    path = tmp_path / "policy.yaml"
    path.write_text("version: '1'\n" + "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdefgh", "bcdefghi")))
    with pytest.raises(ConfigValidationError) as info:
        load_policy(str(path), registry)
    assert any("alias" in p.message for p in info.value.problems) and len(str(info.value)) < 2000
