#!/usr/bin/env bash
# `make test-hf-newest`: the Transformers integration's tests on the newest Transformers 5.x, in .venv-hf-newest.
#
# The main venv runs the Transformers pinned in requirements-dev.lock (the oldest release we support);
# this stage runs the same integration tests on the newest 5.x, so a release that changes the modeling
# code (decorated forwards, renamed kwargs) fails CI here instead of silently leaving modules unpatched.
# The venv is built once and reused (a stamp file records the versions); LayerZero is re-installed
# editable on every run. torch==2.13.0 is installed first (the CPU build; a plain `torch` would pull a
# multi-GB CUDA build), then the dev extras under the lock, then Transformers overriding the lock's pin.
#
# The run covers patching (every shipped spec has its RoPE, norms and MLPs patched), parity with the
# unpatched model, generation, attention and torch.compile; the multi-device tests skip without GPUs.
#
# Environment: PYTHON (interpreter for the venv, default python3), LAYERZERO_HF_NEWEST_VENV (default
# .venv-hf-newest), LAYERZERO_HF_NEWEST (the Transformers version, default below), LAYERZERO_HF_NEWEST_TIMEOUT
# (whole run, seconds, default 1800; about 6 minutes on 2 idle cores). Extra arguments go to pytest.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LAYERZERO_HF_NEWEST_VENV:-$ROOT/.venv-hf-newest}"
PYTHON="${PYTHON:-python3}"
TRANSFORMERS_VERSION="${LAYERZERO_HF_NEWEST:-5.24.0}"
TORCH_SPEC="torch==2.13.0"
STAMP="$VENV/.layerzero-hf-newest-ready"
WANT="$TORCH_SPEC transformers==$TRANSFORMERS_VERSION $(sha256sum "$ROOT/requirements-dev.lock" | cut -c1-16)"

cd "$ROOT"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
    echo "[test-hf-newest] building $VENV with transformers==$TRANSFORMERS_VERSION"
    [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q "$TORCH_SPEC"
    "$VENV/bin/python" -m pip install -q -c requirements-dev.lock -e ".[hf,dev,triton]"
    # after the locked install, so this version replaces the lock's pin
    "$VENV/bin/python" -m pip install -q "transformers==$TRANSFORMERS_VERSION"
    echo "$WANT" > "$STAMP"
fi

"$VENV/bin/python" -m pip install -q --no-deps -e "$ROOT"
"$VENV/bin/python" - "$TRANSFORMERS_VERSION" <<'PY'
import sys
import transformers
assert transformers.__version__ == sys.argv[1], f"expected transformers {sys.argv[1]}, got {transformers.__version__}"
print(f"[test-hf-newest] transformers {transformers.__version__}")
PY

# Two pytest runs: tests/hf and tests/multidevice each have a conftest.py imported as `conftest`, and the HF
# tests import helpers from theirs. The slowest repeats are left to `make test` on the locked release:
# greedy generation on every architecture (kept: llama and gemma2, which cover the decorated forwards and
# softcapping), the static-cache generations of gemma2/gpt-oss and the CPU multi-GPU benchmark.
deselect=()
for arch in mistral qwen2 qwen3 gemma gemma3_text phi3 gpt_oss; do
    deselect+=(--deselect "tests/hf/test_patch_models.py::test_greedy_generation_dynamic_and_static[$arch]")
done
for id in static-gemma2 static-gpt_oss dynamic-gpt_oss; do
    deselect+=(--deselect "tests/hf/test_attention.py::test_greedy_generation_matches_eager[$id]")
done
deselect+=(--deselect tests/multidevice/test_multi_gpu_bench.py::test_cpu_mode_runs_device_map_and_tp_with_parity)

PYTEST=("$VENV/bin/python" -m pytest -q -p no:cacheprovider "${deselect[@]}")
budget="${LAYERZERO_HF_NEWEST_TIMEOUT:-1800}"
# test_transformers_versions.py holds the explicit check: every shipped spec (patches/*.yaml) gets its
# RoPE, norms and MLPs patched on this release, with logits matching the unpatched model.
timeout "$budget" "${PYTEST[@]}" tests/hf/test_transformers_versions.py tests/hf/test_patch_mechanism.py tests/hf/test_residual_norm.py \
    tests/hf/test_patch_models.py tests/hf/test_attention.py "$@"
left=$(( budget - SECONDS ))
[ "$left" -gt 0 ] || { echo "[test-hf-newest] out of time (LAYERZERO_HF_NEWEST_TIMEOUT=$budget) after the HF tests"; exit 124; }
timeout "$left" "${PYTEST[@]}" tests/multidevice tests/test_seed_examples.py "$@"
