"""``layerzero doctor`` fails on broken user configuration; ``layerzero validate`` reads every kind of file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("typer")
pytest.importorskip("rich")

from layerzero.cli.app import run  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted([*(ROOT / "configs").glob("*.yaml"), *(ROOT / "configs" / "examples").glob("*.yaml"),
                  *(ROOT / "patches").glob("*.yaml")])


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    monkeypatch.delenv("LAYERZERO_POLICY", raising=False)
    monkeypatch.delenv("LAYERZERO_HF_RULES", raising=False)
    monkeypatch.setenv("COLUMNS", "200")


def test_doctor_exits_1_on_invalid_policy_file(tmp_path, monkeypatch, capsys):
    bad = tmp_path / "policy.yaml"
    bad.write_text('version: "1.0"\nkernel_lokcs: {}\n')
    monkeypatch.setenv("LAYERZERO_POLICY", str(bad))
    assert run(["doctor", "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is False
    (problem,) = data["configuration_problems"]
    assert "$LAYERZERO_POLICY" in problem and "kernel_lokcs" in problem and "layerzero validate" in problem


def test_doctor_exits_1_on_missing_policy_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LAYERZERO_POLICY", str(tmp_path / "gone.yaml"))
    assert run(["doctor"]) == 1
    assert "problem:" in capsys.readouterr().out


def test_doctor_says_install_when_a_backend_is_missing(monkeypatch):
    from layerzero.cli import doctor

    real_find = doctor._find
    monkeypatch.setattr(doctor, "_find", lambda m: False if m.split(".")[0] == "triton" else real_find(m))
    rows = {r["backend"]: r for r in doctor.backend_rows()}
    triton = rows["triton"]
    assert not triton["installed"]
    assert "install" in triton["reason"] and "triton" in triton["reason"]
    assert "TRITON_INTERPRET" not in triton["reason"]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_validate_never_calls_a_shipped_file_invalid(path, capsys):
    if path.parent.name == "patches" or path.name == "models.yaml":
        pytest.importorskip("transformers")
    code = run(["validate", str(path), "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0 and data["valid"], data
    expected = "spec" if path.parent.name == "patches" else "rules" if path.name == "models.yaml" else "policy"
    assert data["kind"] == expected


def test_validate_reports_rules_problems_as_rules(tmp_path, capsys):
    pytest.importorskip("transformers")
    bad = tmp_path / "models.yaml"
    bad.write_text("version: 1\nrules:\n  - name: x\n    match: {model_type: llama}\n    kernels: {rms_norm: nope}\n")
    assert run(["validate", str(bad)]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"INVALID: {bad} (rules)") and "rules[0].kernels.rms_norm" in out


def test_validate_reports_spec_problems_as_spec(tmp_path, capsys):
    pytest.importorskip("transformers")
    bad = tmp_path / "arch.yaml"
    bad.write_text("version: 1\nmodel_types: [llama]\npatches: []\n")
    assert run(["validate", str(bad)]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"INVALID: {bad} (spec)") and "patches" in out
