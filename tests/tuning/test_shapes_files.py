"""Shape files are read through the guarded reader: a FIFO never blocks, an alias bomb is rejected."""

from __future__ import annotations

import os
import time

import pytest

from layerzero.errors import ConfigValidationError
from layerzero.tuning.shapes import load_shapes


def test_yaml_and_json_shape_files_load(tmp_path):
    (tmp_path / "s.yaml").write_text("- {operation: rms_norm, dtype: float32, tokens: 8, hidden: 64}\n")
    (tmp_path / "s.json").write_text('[{"operation": "rms_norm", "dtype": "float32", "tokens": 8, "hidden": 64}]')
    assert load_shapes(tmp_path / "s.yaml") == load_shapes(tmp_path / "s.json")


def test_fifo_and_alias_bomb_are_rejected_quickly(tmp_path):
    fifo = tmp_path / "shapes.yaml"
    os.mkfifo(fifo)
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdefgh", "bcdefghi")))
    for path, what in ((fifo, "named pipe"), (bomb, "alias")):
        start = time.perf_counter()
        with pytest.raises(ConfigValidationError, match=what):
            load_shapes(path)
        assert time.perf_counter() - start < 5  # generous: a loaded CI machine
