#!/usr/bin/env bash
# The GPU verification on the lent GPU machine (2 x H200, `nvidia-h200-x2`), in calls of at most 10 minutes,
# made back to back so the machine stays warm and /tmp (FlashInfer, Triton and Inductor caches, the cost
# table) carries over. The GPU tier is `install` (a 5-second copy) + `prepare` + `verify`; `bench` measures.
# Procedure, reasons and what each call returns: docs/gpu_verification.md.
#
#   install - (carry .whl-big: FlashInfer's wheel fills the transfer limit alone) pip-installs it into /tmp/site.
#   prepare - (carry .whl: apache-tvm-ffi, which FlashInfer needs, and liger-kernel) compiles every FlashInfer
#             configuration the later calls use, ~30 processes side by side (benchmarks/flashinfer_warmup.py),
#             then measures the cost table on both GPUs (layerzero.tuning.cost_sweep). From here on
#             FLASHINFER_DISABLE_JIT=1: a configuration missing from the cache fails at once.
#   bench   - (carry .whl) multi-GPU parity and speed (both GPUs), then the end-to-end models (Llama-1B with
#             compiled prefill and Qwen3-1.7B on GPU 0; Gemma2-2B, the softcap decode kernel and the prefill of
#             all nine architectures vs Liger (benchmarks/prefill_archs.py) on GPU 1),
#             ranked by the cost table just measured.
#   verify  - (carry .whl) pytest -m gpu on GPU 0 while GPU 1 replays the calls real models make on every
#             eligible kernel and runs the parity matrix; then the cross-device tests on both GPUs and the
#             kernel bandwidth sweep.
# LAYERZERO_COMMIT names the commit measured (the machine's copy of the tree has no usable git history).
set -uo pipefail
stage=${1:?stage: install|prepare|bench|verify}
OUT=${OUT:-/tmp/lz-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
# every compile cache under /tmp, which survives between the calls of one warm machine
CACHE=/tmp/lz-cache
export FLASHINFER_WORKSPACE_BASE=$CACHE/flashinfer TRITON_CACHE_DIR=$CACHE/triton TORCHINDUCTOR_CACHE_DIR=$CACHE/inductor
export FLASHINFER_NVCC_THREADS=2
site=/tmp/site
pipi() { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$@"; }
export PYTHONPATH=$site:$PWD
LOG=$OUT/logs.txt
section() { echo "=== $1 ($(date +%T))" >> "$LOG"; }
versions() {
python3 - <<'PY' >> "$LOG" 2>&1
import importlib, os, torch
print("commit", os.environ.get("LAYERZERO_COMMIT"), "| devices", [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
      "| torch", torch.__version__, "cuda", torch.version.cuda, "| cpus", os.cpu_count())
for m in ("triton", "transformers", "accelerate", "flashinfer", "liger_kernel", "flash_attn", "xformers"):
    try:
        mod = importlib.import_module(m); print(" ", m, getattr(mod, "__version__", "?"))
    except Exception as e:
        print(" ", m, "MISSING", type(e).__name__, str(e)[:120])
PY
}

if [ "$stage" = install ]; then  # FlashInfer's wheel fills the transfer limit on its own: nothing else here
  pipi .whl-big/*.whl && echo "flashinfer installed" >> "$LOG"; tail -3 "$LOG"; exit
fi

[ -d .whl ] && pipi --upgrade .whl/*.whl >/dev/null 2>&1
versions
if [ "$stage" = prepare ]; then
  section "flashinfer JIT (parallel)"
  MAX_JOBS=2 timeout 420 python3 benchmarks/flashinfer_warmup.py --jobs 30 --out "$OUT/warmup.json" >> "$LOG" 2>&1
  echo "warmup rc=$?" >> "$LOG"; du -sh $CACHE/* >> "$LOG" 2>&1
  export FLASHINFER_DISABLE_JIT=1
  section "cost sweep (GPU 0: attention; GPU 1: norms, RoPE, activations)"
  (CUDA_VISIBLE_DEVICES=0 timeout 150 python3 -m layerzero.tuning.cost_sweep --operations "attention.*" \
     --max-seconds 130 --out $CACHE/costs-attention > /tmp/costs0.log 2>&1; echo "rc=$?" >> /tmp/costs0.log) &
  (CUDA_VISIBLE_DEVICES=1 timeout 150 python3 -m layerzero.tuning.cost_sweep --operations "rms_norm,rope,swiglu,geglu" \
     --max-seconds 130 --out $CACHE/costs-pointwise > /tmp/costs1.log 2>&1; echo "rc=$?" >> /tmp/costs1.log) &
  wait
  for f in /tmp/costs0.log /tmp/costs1.log; do echo "--- $f" >> "$LOG"; tail -8 "$f" >> "$LOG"; done
  python3 -m layerzero.tuning.cost_table merge $CACHE/costs-attention $CACHE/costs-pointwise --out $CACHE/costs >> "$LOG" 2>&1
  cp $CACHE/costs/* "$OUT/" 2>/dev/null
  tail -40 "$LOG"; exit
fi
# compiled in the prepare call: a configuration missing from the cache fails at once instead of compiling
export FLASHINFER_DISABLE_JIT=1
if [ "$stage" = bench ]; then
  section multi_gpu
  timeout 170 python3 benchmarks/multi_gpu.py --shape 8b --layers 8 --json "$OUT/multi-gpu.json" --md "$OUT/multi-gpu.md" \
    >> "$LOG" 2>&1; echo "multi_gpu rc=$?" >> "$LOG"
  section "e2e (GPU 0: llama-1b + compiled prefill, qwen3-1.7b; GPU 1: gemma2-2b, softcap decode, nine architectures' prefill)"
  e2e() {  # arch, time limit, extra options
    timeout "$2" python3 benchmarks/e2e.py --arch "$1" --skip-eager --repeats 3 "${@:3}" --json "/tmp/e2e-$1.json" \
      --md "/tmp/e2e-$1.md" > "/tmp/e2e-$1.log" 2>&1; echo "e2e $1 rc=$?" >> "/tmp/e2e-$1.log"
  }
  (export CUDA_VISIBLE_DEVICES=0; e2e llama-1b 250 --compile-shapes 8x1024; e2e qwen3-1.7b 150 --no-static) &
  (export CUDA_VISIBLE_DEVICES=1; e2e gemma2-2b 250 --no-static
   timeout 40 python3 benchmarks/decode_softcap.py --json /tmp/e2e-ds.json --md /tmp/e2e-ds.md > /tmp/ds.log 2>&1
   timeout 110 python3 benchmarks/prefill_archs.py --json /tmp/e2e-archs.json --md /tmp/e2e-archs.md > /tmp/archs.log 2>&1
   echo "prefill_archs rc=$?" >> /tmp/archs.log) &
  wait
  for f in /tmp/e2e-*.log /tmp/ds.log /tmp/archs.log; do echo "--- $f" >> "$LOG"; tail -12 "$f" >> "$LOG"; done
  # one JSON and one markdown file for the three models and the decode kernel (a call returns 8 files)
  python3 - "$OUT" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1]); merged, md = {}, []
for name in ("e2e-llama-1b", "e2e-qwen3-1.7b", "e2e-gemma2-2b", "e2e-ds", "e2e-archs"):
    j = pathlib.Path("/tmp") / (name + ".json")
    m = j.with_suffix(".md")
    if j.exists():
        merged[j.stem] = json.loads(j.read_text()); j.unlink()
    if m.exists():
        md.append(m.read_text()); m.unlink()
(out / "e2e.json").write_text(json.dumps(merged, indent=2)); (out / "e2e.md").write_text("\n\n".join(md))
PY
elif [ "$stage" = verify ]; then
  (CUDA_VISIBLE_DEVICES=0 LAYERZERO_FAIL_ON_RECOMPILE_LIMIT=1 timeout 420 python3 -m pytest -m gpu -q -p no:cacheprovider -rs tests \
     --ignore=tests/multidevice > "$OUT/pytest-gpu.log" 2>&1; echo "pytest rc=$?" >> "$OUT/pytest-gpu.log") &
  (export CUDA_VISIBLE_DEVICES=1
   timeout 240 python3 benchmarks/in_context_replay.py --jobs 9 --json "$OUT/replay.json" --md "$OUT/replay.md" > /tmp/replay.log 2>&1
   echo "replay rc=$?" >> /tmp/replay.log
   timeout 200 python3 benchmarks/parity_matrix.py --json "$OUT/parity.json" --md "$OUT/parity.md" > /tmp/parity.log 2>&1
   echo "parity rc=$?" >> /tmp/parity.log) &
  wait
  for f in /tmp/replay.log /tmp/parity.log; do echo "--- $f" >> "$LOG"; tail -15 "$f" >> "$LOG"; done
  section cross-device
  timeout 100 python3 -m pytest -m gpu -q -p no:cacheprovider -rs tests/multidevice > /tmp/md.log 2>&1; tail -8 /tmp/md.log >> "$LOG"
  section kernel-sweep
  timeout 50 python3 benchmarks/kernel_sweep.py --out "$OUT/kernels" > /tmp/sweep.log 2>&1; tail -3 /tmp/sweep.log >> "$LOG"
  section "recompile-limit warnings"
  grep -c "recompile_limit\|cache_size_limit" "$OUT/pytest-gpu.log" /tmp/replay.log /tmp/parity.log /tmp/md.log >> "$LOG" 2>&1
  tail -30 "$OUT/pytest-gpu.log"
fi
tail -40 "$LOG"
