"""The guarded config reader: regular files only (never blocks on a FIFO), size and alias limits, clipped
messages; every failure is a ConfigValidationError naming the file, the value and the fix."""

from __future__ import annotations

import os
import time

import pytest

from layerzero.config_files import (
    CLIP_CHARS,
    FileTooLargeError,
    NotARegularFileError,
    YamlLimits,
    clip_text,
    compose_yaml,
    load_yaml_file,
    load_yaml_text,
    read_regular_file,
)
from layerzero.errors import ConfigValidationError


def alias_bomb(levels: int, width: int = 9) -> str:
    """The "billion laughs" document: each level lists the previous one ``width`` times."""
    names = "abcdefghijklmnop"
    text = f"a: &a [{', '.join(['lol'] * width)}]\n"
    for prev, cur in zip(names[: levels - 1], names[1:levels]):
        text += f"{cur}: &{cur} [{', '.join([f'*{prev}'] * width)}]\n"
    return text


def only_problem(exc: pytest.ExceptionInfo[ConfigValidationError]):
    (p,) = exc.value.problems
    assert "fix:" in p.message
    return p


def test_alias_bomb_is_rejected_fast_with_a_short_message():
    text = alias_bomb(9)
    assert len(text) < 400
    start = time.perf_counter()
    with pytest.raises(ConfigValidationError) as exc:
        load_yaml_text(text, "models.yaml")
    assert time.perf_counter() - start < 5  # the unguarded expansion takes minutes; a generous bound for a loaded CI machine
    p = only_problem(exc)
    assert "alias" in p.message and p.source == "models.yaml"
    assert len(str(exc.value)) < 1000


def test_many_aliases_are_rejected_even_when_the_expansion_is_small():
    text = "a: &a 1\nb: [" + ", ".join(["*a"] * 50) + "]\n"
    assert load_yaml_text(text)["b"] == [1] * 50
    with pytest.raises(ConfigValidationError) as exc:
        load_yaml_text(text, "x.yaml", YamlLimits(max_aliases=10))
    assert "more than 10 YAML aliases" in only_problem(exc).message


def test_a_document_that_contains_itself_is_rejected():
    for text in ("a: &a [*a]\n", "m: &m {k: *m}\n"):
        with pytest.raises(ConfigValidationError) as exc:
            load_yaml_text(text, "x.yaml")
        assert "refers to itself" in only_problem(exc).message


def test_small_aliases_and_plain_documents_still_load():
    assert load_yaml_text("base: &b {x: 1}\nuse: *b\nmerged: {<<: *b, y: 2}\n") == {
        "base": {"x": 1}, "use": {"x": 1}, "merged": {"x": 1, "y": 2}}
    assert load_yaml_text("") is None and compose_yaml("# only a comment\n") is None


def test_unsafe_tags_and_syntax_errors_become_problems():
    with pytest.raises(ConfigValidationError) as exc:
        load_yaml_text("!!python/object/apply:os.system ['true']\n", "x.yaml")
    assert "fix:" in only_problem(exc).message
    with pytest.raises(ConfigValidationError) as exc:
        load_yaml_text("a: [1\n", "x.yaml")
    p = only_problem(exc)
    assert "YAML syntax error" in p.message and p.value == "line 2, column 1"


def test_named_pipe_is_rejected_without_blocking(tmp_path):
    fifo = tmp_path / "policy.yaml"
    os.mkfifo(fifo)
    start = time.perf_counter()
    with pytest.raises(NotARegularFileError):
        read_regular_file(fifo)
    with pytest.raises(ConfigValidationError) as exc:
        load_yaml_file(fifo, "policy file")
    assert time.perf_counter() - start < 5  # blocking would hang; a generous bound for a loaded CI machine
    p = only_problem(exc)
    assert "named pipe" in p.message and p.value == str(fifo)


def test_directory_missing_and_binary_files(tmp_path):
    with pytest.raises(ConfigValidationError) as exc:
        load_yaml_file(tmp_path, "rules file")
    assert "directory" in only_problem(exc).message
    with pytest.raises(ConfigValidationError) as exc:
        load_yaml_file(tmp_path / "nope.yaml", "rules file")
    assert "rules file not found" in only_problem(exc).message
    binary = tmp_path / "b.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigValidationError) as exc:
        load_yaml_file(binary)
    assert "not UTF-8" in only_problem(exc).message


def test_size_limit(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("a: 1\n" * 100)
    assert read_regular_file(big, max_bytes=500) == b"a: 1\n" * 100
    with pytest.raises(FileTooLargeError):
        read_regular_file(big, max_bytes=499)
    with pytest.raises(ConfigValidationError) as exc:
        load_yaml_file(big, "policy file", max_bytes=100)
    assert "too large" in only_problem(exc).message


def test_values_in_messages_are_clipped(tmp_path):
    assert len(clip_text("x" * 1_000_000)) <= CLIP_CHARS
    assert len(clip_text([list(range(1000))] * 1000)) <= CLIP_CHARS
    long_path = tmp_path / ("d" * 200) / ("f" * 200)
    with pytest.raises(ConfigValidationError) as exc:
        load_yaml_file(long_path)
    assert len(repr(only_problem(exc).value)) <= CLIP_CHARS + 2


def test_symlink_to_a_regular_file_is_followed(tmp_path):
    real = tmp_path / "real.yaml"
    real.write_text("version: '1'\n")
    link = tmp_path / "link.yaml"
    link.symlink_to(real)
    assert load_yaml_file(link) == {"version": "1"}


def test_no_module_parses_yaml_around_the_guarded_reader():
    """Every YAML read of the core and the Transformers integration goes through layerzero.config_files:
    no other module there calls PyYAML's loaders."""
    import re
    from pathlib import Path

    import layerzero

    root = Path(layerzero.__file__).resolve().parent.parent
    pattern = re.compile(r"\byaml\.(safe_load|load|full_load|unsafe_load|compose|safe_load_all|load_all)\b")
    offenders = []
    for package in ("layerzero", "layerzero_hf"):
        for path in (root / package).rglob("*.py"):
            if path.name == "config_files.py" and path.parent.name == "layerzero":
                continue
            if pattern.search(path.read_text(encoding="utf-8")):
                offenders.append(str(path.relative_to(root)))
    assert not offenders, offenders
