"""``layerzero bench`` shows the harness's noise flag in the table, the markdown and the JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("typer")
pytest.importorskip("rich")

from layerzero.cli.app import run  # noqa: E402
from layerzero.tuning import kernel_compare  # noqa: E402
from layerzero.tuning.measure import Timing  # noqa: E402


@pytest.fixture(autouse=True)
def _noisy_reference(monkeypatch):
    """Every kernel measures quiet except the reference, whose samples straddle two speeds 100x apart."""
    calls = {"n": 0}

    def fake_measure(fn, device, warmup=3, repeats=10):
        fn()
        calls["n"] += 1
        if calls["n"] % 2 == 0:  # candidates are timed in order; the reference comes last of two
            return Timing.from_samples([78.0, 79.0, 7995.0, 80.0, 7990.0, 8000.0], "fake")
        return Timing.from_samples([50.0, 50.5, 49.5, 50.0, 50.2, 49.8], "fake")

    monkeypatch.setattr(kernel_compare, "measure", fake_measure)
    monkeypatch.delenv("LAYERZERO_POLICY", raising=False)
    monkeypatch.setenv("COLUMNS", "200")


def _args(*extra: str) -> list[str]:
    return ["bench", "--op", "swiglu", "--kernel", "torch_swiglu", "--kernel", "reference_swiglu", "--device", "cpu",
            "--no-progress", *extra]


def test_json_rows_carry_spread_and_noisy(capsys):
    assert run(_args("--json")) == 0
    data = json.loads(capsys.readouterr().out)
    rows = {r["kernel_id"]: r for r in data["results"]}
    assert rows["reference_swiglu"]["noisy"] is True and rows["reference_swiglu"]["spread"] > 1
    assert rows["torch_swiglu"]["noisy"] is False and rows["torch_swiglu"]["spread"] < 0.05
    assert data["meta"]["noise_threshold"] > 0 and data["meta"]["timer"]


def test_table_and_markdown_mark_noisy_rows(capsys, tmp_path: Path):
    out = tmp_path / "bench.md"
    assert run(_args("--out", str(out))) == 0
    table = capsys.readouterr().out
    line = next(ln for ln in table.splitlines() if "reference_swiglu" in ln)
    assert "noisy" in line
    assert "noisy" not in next(ln for ln in table.splitlines() if "torch_swiglu" in ln)
    assert "IQR / median" in table  # the footnote says what the flag means
    md = out.read_text()
    assert "**noisy**" in next(ln for ln in md.splitlines() if ln.startswith("| reference_swiglu"))
