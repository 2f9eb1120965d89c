"""The examples run as users run them: each script in a fresh interpreter, the notebook through nbclient.

CPU only, seconds each. Outputs are checked for the facts each example exists to show; notebook outputs
are never written back (the committed notebook has none).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env["OMP_NUM_THREADS"] = "1"  # tiny CPU kernels: threads only add scheduling noise on shared runners
    env.pop("LAYERZERO_POLICY", None)
    return env


def _run(script: str) -> str:
    proc = subprocess.run([sys.executable, str(EXAMPLES / script)], cwd=ROOT, env={**_env(), "MPLBACKEND": "Agg"}, capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_quickstart():
    pytest.importorskip("transformers")
    out = _run("quickstart.py")
    for op_line in ("attention first call", "rms_norm", "rope", "swiglu"):
        assert op_line in out
    assert "cache hit: True" in out  # the second attention call
    assert "rejected" in out and "flash_attn_v2_attention" in out  # explain() shows GPU kernels and why not
    assert "logits vs plain Transformers" in out and "PatchReport(" in out
    assert "rms_norm: 5" in out


def test_hot_reload():
    out = _run("hot_reload.py")
    assert "v1: rms_norm -> torch_rms_norm" in out
    assert "v2: rms_norm -> reference_rms_norm" in out
    assert "kernel_locks.rms_norm" in out and "'reference_rms_nrom'" in out  # the rejected edit, field + value
    assert "4. after rollback()" in out and "rollbacks=1" in out


def test_ab_test():
    out = _run("ab_test.py")
    assert "b_ratio=0.50" in out and "'config_b_version': 1" in out
    assert "torch_sdpa_math_attention" in out and "reference_rms_norm" in out


def test_custom_dispatcher():
    out = _run("custom_dispatcher.py")
    assert "calls through the custom dispatcher: 3" in out
    assert "swiglu -> " in out and "rms_norm -> " in out


@pytest.mark.slow  # a Jupyter kernel start plus the notebook: ~20 s on a shared 2-core runner
def test_notebook_executes(monkeypatch, tmp_path):
    pytest.importorskip("transformers")
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    pytest.importorskip("pandas")
    pytest.importorskip("matplotlib")
    for key, value in _env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend renders figures as PNG
    path = EXAMPLES / "compare_kernels.ipynb"
    nb = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit the notebook without outputs"
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    text = "\n".join(
        o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
        for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
    )
    assert "tiny random Llama" in text or "cuda" in text
    assert "PolicyComparison" in text
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert images, "results.plot() drew nothing"
