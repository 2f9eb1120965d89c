"""Bad input to the ``layerzero`` command: one ``error:`` line, exit code 2, a hint, never a traceback.

These go through :func:`layerzero.cli.app.run`, the function the console script calls, so click's own
usage errors (unknown options, non-integers) are checked in the form users see them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("typer")
pytest.importorskip("rich")

from layerzero.cli.app import run  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _no_user_policy(monkeypatch):
    monkeypatch.delenv("LAYERZERO_POLICY", raising=False)
    monkeypatch.delenv("LAYERZERO_HF_RULES", raising=False)
    monkeypatch.setenv("COLUMNS", "200")


def _error(capsys, *args: str) -> str:
    code = run(list(args))
    out, err = capsys.readouterr()
    assert code == 2, (code, out, err)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err  # one line: no traceback, no framed panel
    assert lines[0].startswith("error: ") and "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("args, must", [
    (("bench", "--dtype", "bfloat"), ["--dtype 'bfloat'", "did you mean 'bfloat16'"]),
    (("bench", "--device", "gpu"), ["--device 'gpu'", "did you mean 'cuda'"]),
    (("tune", "--dtype", "int8"), ["--dtype 'int8'", "floating-point", "float16"]),
    (("explain", "rms_norm", "--device", "gpu"), ["--device 'gpu'", "did you mean 'cuda'"]),
    (("explain", "rms_norm", "--device", "mps"), ["--device 'mps'", "CPU and CUDA", "use cpu"]),
    (("explain", "attention.causal", "--batch", "0", "--seq", "-5"), ["--batch 0", "--seq -5", "at least 1"]),
    (("explain", "rms_nrom"), ["'rms_nrom'", "did you mean 'rms_norm'"]),
    (("kernels", "--op", "swiglo"), ["--op 'swiglo'", "did you mean 'swiglu'"]),
    (("kernels", "--backend", "flashinfr"), ["--backend 'flashinfr'", "did you mean 'flashinfer'"]),
    (("bench", "--device", "cpu", "--op", "swiglu", "--kernel", "torch_swiglo"),
     ["--kernel 'torch_swiglo'", "did you mean 'torch_swiglu'"]),
    (("explain", "rms_norm", "--dtype", "fp8"), ["--dtype 'fp8'", "use one of"]),
    (("bench", "--repeats", "many"), ["'--repeats'", "layerzero bench --help"]),
    (("explain", "rms_norm", "--dtyp", "float32"), ["--dtyp", "did you mean --dtype"]),
    (("doctr",), ["doctr", "doctor"]),
    (("validate", "no/such/file.yaml"), ["no/such/file.yaml", "not found"]),
    (("validate", "configs/models.yaml", "--kind", "rule"), ["--kind 'rule'", "did you mean 'rules'"]),
])
def test_bad_input_is_one_line_with_exit_2(capsys, args, must):
    line = _error(capsys, *args)
    for text in must:
        assert text in line, line


def test_dtype_aliases_are_accepted(capsys):
    assert run(["explain", "rms_norm", "--device", "cpu", "--dtype", "bf16", "--tokens", "4", "--hidden", "8",
                "--json"]) == 0
    assert '"dtype": "bfloat16"' in capsys.readouterr().out


def test_version(capsys):
    import layerzero

    assert run(["--version"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"layerzero {layerzero.__version__}") and "layerzero-dispatch" in out


def test_python_dash_m_layerzero():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "layerzero", "--version"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("layerzero ")
    proc = subprocess.run([sys.executable, "-m", "layerzero", "bench", "--dtype", "bfloat"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "bfloat16" in proc.stderr


def test_cli_modules_stay_small():
    for path in (ROOT / "layerzero" / "cli").glob("*.py"):
        assert len(path.read_text().splitlines()) <= 500, path
