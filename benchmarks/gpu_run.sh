#!/usr/bin/env bash
# One stage of the GPU verification on the lent device machine (see ../shared/GPU.md). Each stage fits a
# 10-minute call and writes at most 8 files under $OUT:
#   install  - FlashInfer wheel (carry .whl-big) into /tmp/site (kept while the machine stays warm)
#   verify   - liger (carry .whl); pytest -m gpu; kernel sweep; Triton bandwidth
#   models   - attention choice sweep; Llama-1B-shaped model vs HF sdpa/eager/Liger; dispatch overhead
set -uo pipefail
stage=${1:?stage: install|verify|models}
OUT=${OUT:-/tmp/lz-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
site=/tmp/site
pipi() { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$@"; }
if [ "$stage" = install ]; then
  pipi .whl-big/*.whl && echo "flashinfer installed"; exit
fi
[ -d .whl ] && pipi --upgrade .whl/*.whl
export PYTHONPATH=$site:$PWD
python3 - <<'PY' | tee "$OUT/env.txt"
import importlib, torch
print("device", torch.cuda.get_device_name(0), "torch", torch.__version__, "cuda", torch.version.cuda)
for m in ("triton", "transformers", "flashinfer", "liger_kernel", "flash_attn", "xformers"):
    try:
        mod = importlib.import_module(m); print(m, getattr(mod, "__version__", "?"))
    except Exception as e:
        print(m, "MISSING", type(e).__name__, str(e)[:120])
PY
if [ "$stage" = verify ]; then
  timeout 300 python3 -m pytest -m gpu -q -p no:cacheprovider -rs tests 2>&1 | tee "$OUT/pytest-gpu.log" | tail -25
  timeout 150 python3 benchmarks/kernel_sweep.py --out "$OUT/kernels" 2>&1 | tail -15
  timeout 120 python3 benchmarks/triton_bandwidth.py --json "$OUT/triton.json" --md "$OUT/triton.md" 2>&1 | tail -20
elif [ "$stage" = models ]; then
  timeout 200 python3 benchmarks/attention_choice.py --out "$OUT/attention" 2>&1 | tail -8
  timeout 330 python3 benchmarks/hf_llama.py --json "$OUT/hf_llama.json" --md "$OUT/hf_llama.md" 2>&1 | tail -25
  timeout 60 python3 benchmarks/dispatch_overhead.py --json "$OUT/overhead.json" --md "$OUT/overhead.md" 2>&1 | tail -16
fi
