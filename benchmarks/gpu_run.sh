#!/usr/bin/env bash
# The GPU verification on the lent GPU machine (one or two H200s: `nvidia-h200` or `nvidia-h200-x2`):
# `install` (a 5-second copy) then two calls of at most 10 minutes, made back to back so the machine stays
# warm and /tmp (FlashInfer, Triton and Inductor caches) carries over. Procedure, reasons and what each
# call returns: docs/gpu_verification.md. With one GPU, "GPU 1" below is GPU 0 and the 2-GPU parts skip.
#
#   install - (carry .whl-big holding FlashInfer's wheel, which fills the transfer limit alone) pip-installs it
#             into /tmp/site-fi, a directory of its own, so the first run's benchmarks can leave it off the path.
#             Not needed when .whl-big holds the wheel's files as .tar.xz (16 MB): run1 unpacks that itself.
#   run1    - (carry .whl: apache-tvm-ffi, liger-kernel; and .whl-big as .tar.xz) on a quiet machine, FlashInfer off the path: the
#             multi-GPU parity and speed (2 GPUs), the Gemma2-2B decode A/B with a host profile (GPU 0)
#             beside the kernel sweep and the nine architectures' prefill vs Liger (GPU 1, 2 GPUs only);
#             then, with the rest of the 10 minutes and every core, the JIT of every FlashInfer
#             configuration run2 loads (benchmarks/flashinfer_warmup.py --shapes small).
#   run2    - (carry .whl) finishes that JIT if run1 could not; then pytest -m gpu on GPU 0 while GPU 1
#             replays the calls real models make on every eligible kernel and runs the parity matrix; then
#             the cross-device tests (2 GPUs). FlashInfer
#             loads what run1 compiled from its workspace (FLASHINFER_WORKSPACE_BASE). Do not set
#             FLASHINFER_DISABLE_JIT: it restricts FlashInfer to its ahead-of-time package and ignores that
#             workspace (measured: every module run1 had built was reported missing).
#   recheck - (carry .whl, no install) after a change that FlashInfer does not touch, in one call: the
#             decode A/B (skipped with DECODE_ROUNDS=0), then pytest -m gpu beside the replay and the parity
#             matrix, FlashInfer off the path.
#   bench   - (carry .whl, optional) the end-to-end models of benchmarks/e2e.py, FlashInfer off the path
#             (BENCH_FLASHINFER=1 keeps it, after run1 with WARMUP_SHAPES naming the benchmarked shapes).
# LAYERZERO_COMMIT names the commit measured (the machine's copy of the tree has no usable git history).
set -uo pipefail
stage=${1:?stage: install|run1|run2|recheck|bench}
OUT=${OUT:-/tmp/lz-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
# every compile cache under /tmp, which survives between the calls of one warm machine
CACHE=/tmp/lz-cache
export FLASHINFER_WORKSPACE_BASE=$CACHE/flashinfer TRITON_CACHE_DIR=$CACHE/triton TORCHINDUCTOR_CACHE_DIR=$CACHE/inductor
export FLASHINFER_NVCC_THREADS=2
site=/tmp/site
fi_site=/tmp/site-fi
pipi() { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir "$@"; }
export PYTHONPATH=$site:$PWD
with_fi() { PYTHONPATH=$fi_site:$PYTHONPATH "$@"; }
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

tests_replay_parity() {  # pytest -m gpu on GPU 0 beside the in-context replay and the parity matrix on GPU $G1
  section "pytest -m gpu (GPU 0) | replay, parity (GPU $G1)"
  (CUDA_VISIBLE_DEVICES=0 LAYERZERO_FAIL_ON_RECOMPILE_LIMIT=1 timeout $((560 - SECONDS)) python3 -m pytest -m gpu -q -p no:cacheprovider \
     -rs tests --ignore=tests/multidevice > "$OUT/pytest-gpu.log" 2>&1; echo "pytest rc=$?" >> "$OUT/pytest-gpu.log") &
  (export CUDA_VISIBLE_DEVICES=$G1
   timeout 240 python3 benchmarks/in_context_replay.py --jobs 9 --json "$OUT/replay.json" --md "$OUT/replay.md" > /tmp/replay.log 2>&1
   echo "replay rc=$?" >> /tmp/replay.log
   timeout 190 python3 benchmarks/parity_matrix.py --json "$OUT/parity.json" --md "$OUT/parity.md" > /tmp/parity.log 2>&1
   echo "parity rc=$?" >> /tmp/parity.log) &
  wait
}

install_flashinfer() {  # .whl-big holds FlashInfer's wheel, or its files as a .tar.xz (16 MB instead of 62: fits beside .whl)
  if ls .whl-big/*.tar.xz >/dev/null 2>&1; then
    mkdir -p "$fi_site" && tar xJf .whl-big/*.tar.xz -C "$fi_site" && echo "flashinfer unpacked" >> "$LOG"
  elif ls .whl-big/*.whl >/dev/null 2>&1; then
    pipi --target "$fi_site" .whl-big/*.whl && echo "flashinfer installed" >> "$LOG"
  fi
}
if [ "$stage" = install ]; then  # the wheel form fills the transfer limit on its own: nothing else here
  install_flashinfer; tail -3 "$LOG"; exit
fi

NGPU=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
G1=1; G1_NOTE=""  # the second GPU's jobs; on a one-GPU machine they share GPU 0 (run2) or wait (run1)
[ "$NGPU" -ge 2 ] || { G1=0; G1_NOTE=" (one GPU: the multi-GPU parts are skipped)"; }
[ -d .whl ] && pipi --upgrade --target "$site" .whl/*.whl >/dev/null 2>&1
with_fi versions
if [ "$stage" = run1 ]; then  # results in one archive: a call returns at most 8 files
  [ -d .whl-big ] && install_flashinfer
  R=/tmp/run1; rm -rf $R; mkdir -p $R
  if [ "$NGPU" -ge 2 ]; then
    section "multi_gpu (both GPUs, quiet, FlashInfer off the path)"
    timeout 200 python3 benchmarks/multi_gpu.py --shape 8b --layers 8 --json "$R/multi-gpu.json" --md "$R/multi-gpu.md" \
      > /tmp/mg.log 2>&1; echo "multi_gpu rc=$?" >> /tmp/mg.log; tail -25 /tmp/mg.log >> "$LOG"
  fi
  section "quiet: Gemma2-2B decode A/B on GPU 0 (+ host profile)${G1_NOTE}"
  (export CUDA_VISIBLE_DEVICES=0
   timeout 200 python3 benchmarks/decode_ab.py --arch gemma2-2b --rounds "${DECODE_ROUNDS:-7}" --profile \
     --json "$R/decode-ab.json" --md "$R/decode-ab.md" > /tmp/dab.log 2>&1; echo "decode_ab rc=$?" >> /tmp/dab.log) &
  if [ "$NGPU" -ge 2 ]; then
    (export CUDA_VISIBLE_DEVICES=1
     timeout 60 python3 benchmarks/kernel_sweep.py --out "$R/kernels" > /tmp/sweep.log 2>&1; echo "sweep rc=$?" >> /tmp/sweep.log
     timeout 200 python3 benchmarks/prefill_archs.py --json "$R/prefill-archs.json" --md "$R/prefill-archs.md" > /tmp/archs.log 2>&1
     echo "prefill_archs rc=$?" >> /tmp/archs.log) &
  fi
  wait
  left=$((580 - SECONDS))
  section "FlashInfer JIT of what run2 loads (all cores, ${left} s left)"
  with_fi env CUDA_VISIBLE_DEVICES=$G1 MAX_JOBS=2 timeout $left python3 benchmarks/flashinfer_warmup.py --jobs 24 \
    --shapes "${WARMUP_SHAPES:-small}" --out "$R/warmup.json" > /tmp/warmup.log 2>&1; echo "warmup rc=$?" >> /tmp/warmup.log
  for f in /tmp/warmup.log /tmp/dab.log /tmp/sweep.log /tmp/archs.log; do [ -f $f ] && { echo "--- $f" >> "$LOG"; tail -12 "$f" >> "$LOG"; }; done
  du -sh $CACHE/* >> "$LOG" 2>&1
  cp "$LOG" $R/; tar czf "$OUT/run1.tgz" -C $R .
  tail -60 "$LOG"; exit
fi
export PYTHONPATH=$fi_site:$PYTHONPATH  # FlashInfer loads the modules run1 compiled into its workspace
if [ "$stage" = run2 ]; then
  if ! grep -q "failed: none" /tmp/warmup.log 2>/dev/null; then
    section "FlashInfer JIT: what run1 left unfinished"
    env CUDA_VISIBLE_DEVICES=$G1 MAX_JOBS=2 timeout 200 python3 benchmarks/flashinfer_warmup.py --jobs 24 --shapes "${WARMUP_SHAPES:-small}" \
      > /tmp/warmup2.log 2>&1; tail -3 /tmp/warmup2.log >> "$LOG"
  fi
  tests_replay_parity
  for f in /tmp/replay.log /tmp/parity.log; do echo "--- $f" >> "$LOG"; tail -15 "$f" >> "$LOG"; done
  section cross-device
  [ "$NGPU" -ge 2 ] && timeout 100 python3 -m pytest -m gpu -q -p no:cacheprovider -rs tests/multidevice > /tmp/md.log 2>&1; tail -8 /tmp/md.log >> "$LOG"
  section "recompile-limit warnings"
  grep -c "recompile_limit\|cache_size_limit" "$OUT/pytest-gpu.log" /tmp/replay.log /tmp/parity.log /tmp/md.log >> "$LOG" 2>&1
  tail -30 "$OUT/pytest-gpu.log"
elif [ "$stage" = recheck ]; then  # one call, no install: FlashInfer off the path (its tests skip)
  export PYTHONPATH=$site:$PWD
  if [ "${DECODE_ROUNDS:-7}" -gt 0 ]; then  # DECODE_ROUNDS=0: the tests alone (the A/B measured in a call of its own)
    section "quiet: Gemma2-2B decode A/B (+ host profile)"
    CUDA_VISIBLE_DEVICES=0 timeout 150 python3 benchmarks/decode_ab.py --arch gemma2-2b --rounds "${DECODE_ROUNDS:-7}" --profile \
      --json "$OUT/decode-ab.json" --md "$OUT/decode-ab.md" > /tmp/dab.log 2>&1; echo "decode_ab rc=$?" >> /tmp/dab.log
    tail -3 /tmp/dab.log >> "$LOG"
  fi
  tests_replay_parity
  for f in /tmp/replay.log /tmp/parity.log; do echo "--- $f" >> "$LOG"; tail -6 "$f" >> "$LOG"; done
  section "recompile-limit warnings"
  grep -c "recompile_limit\|cache_size_limit" "$OUT/pytest-gpu.log" /tmp/replay.log /tmp/parity.log >> "$LOG" 2>&1
  tail -4 "$OUT/pytest-gpu.log" >> "$LOG"
elif [ "$stage" = bench ]; then
  # FlashInfer off the path unless its JIT covered these shapes (run1 with WARMUP_SHAPES=...; BENCH_FLASHINFER=1):
  # an uncompiled configuration costs minutes of JIT inside a timed benchmark
  [ "${BENCH_FLASHINFER:-0}" = 1 ] || export PYTHONPATH=$site:$PWD
  section "e2e (GPU 0: llama-1b + compiled prefill, qwen3-1.7b; GPU 1: gemma2-2b)"
  e2e() {  # arch, time limit, extra options
    timeout "$2" python3 benchmarks/e2e.py --arch "$1" --skip-eager --repeats 3 "${@:3}" --json "$OUT/e2e-$1.json" \
      --md "$OUT/e2e-$1.md" > "/tmp/e2e-$1.log" 2>&1; echo "e2e $1 rc=$?" >> "/tmp/e2e-$1.log"
  }
  (export CUDA_VISIBLE_DEVICES=0; e2e llama-1b 250 --compile-shapes 8x1024; e2e qwen3-1.7b 150 --no-static) &
  (export CUDA_VISIBLE_DEVICES=$G1; e2e gemma2-2b 250 --no-static) &
  wait
  for f in /tmp/e2e-*.log; do echo "--- $f" >> "$LOG"; tail -12 "$f" >> "$LOG"; done
fi
tail -40 "$LOG"
