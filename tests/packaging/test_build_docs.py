"""scripts/build_docs.py (``make docs``): the API reference build fails on a pdoc warning."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location("build_docs", ROOT / "scripts" / "build_docs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_module_list_covers_both_packages():
    names = _script().modules()
    assert {"layerzero", "layerzero.cli.app", "layerzero.tuning.measure", "layerzero_hf"} <= set(names)
    assert not any(n.startswith("layerzero_vllm") for n in names)


@pytest.mark.parametrize("message, code", [("Error importing layerzero.x: boom", 1),
                                           ("module named a.b, but a module with this name has already been added",
                                            0)])
def test_pdoc_warnings_fail_the_build(monkeypatch, tmp_path, capsys, message, code):
    pdoc = pytest.importorskip("pdoc")
    mod = _script()
    monkeypatch.setattr(mod, "modules", lambda: ["layerzero.errors"])

    def fake_pdoc(*names, output_directory):
        warnings.warn(message, UserWarning)

    monkeypatch.setattr(pdoc, "pdoc", fake_pdoc)
    assert mod.main(["-o", str(tmp_path)]) == code
    if code:
        assert "boom" in capsys.readouterr().err
