#!/usr/bin/env bash
# The GPU verification on the lent GPU machine (one or two H200s: `nvidia-h200` or `nvidia-h200-x2`):
# two calls of at most 10 minutes, run1 and run2, made back to back (within ~30 s) so the machine stays
# warm and /tmp (FlashInfer, Triton and Inductor caches) carries over; timing benchmarks in a call of their
# own. Procedure, reasons and what each call returns: docs/gpu_verification.md. With one GPU, "GPU 1" below
# is GPU 0 and the 2-GPU parts skip.
#
#   install - only when .whl-big holds FlashInfer's wheel (62 MB: it fills the transfer limit alone):
#             pip-installs it into /tmp/site-fi, a directory of its own. With the wheel's files as .tar.xz
#             (16 MB) in .whl-big, run1 unpacks them itself and this call is not needed.
#   run1    - (carry .whl: apache-tvm-ffi, liger-kernel, platformdirs, filelock; and .whl-big) FlashInfer's
#             JIT of every configuration run2 loads (benchmarks/flashinfer_warmup.py) from the first second
#             on every core, beside the kernel sweep (GPU 0) and the cross-device tests (2 GPUs), both with
#             FlashInfer off the path.
#   run2    - (carry .whl) finishes that JIT (the same WARMUP_* selection) if run1 could not; then pytest -m gpu on GPU 0 while GPU 1
#             replays the calls real models make on every eligible kernel and runs the parity matrix.
#             FlashInfer loads what run1 compiled from its workspace (FLASHINFER_WORKSPACE_BASE). Do not set
#             FLASHINFER_DISABLE_JIT: it restricts FlashInfer to its ahead-of-time package and ignores that
#             workspace (measured: every module run1 had built was reported missing).
#   recheck - (carry .whl, no install) after a change that FlashInfer does not touch, in one call: the
#             decode A/B (skipped with DECODE_ROUNDS=0), then pytest -m gpu beside the replay and the parity
#             matrix, FlashInfer off the path.
#   bench   - (carry .whl) the timing benchmarks, one after another on an otherwise idle machine (host-bound
#             decode measured beside other jobs lost up to 35%): BENCHES="multi_gpu decode_ab prefill_archs"
#             by default (PREFILL_ARCHS limits prefill_archs to some), e2e-<arch> for benchmarks/e2e.py; FlashInfer
#             off the path (BENCH_FLASHINFER=1 keeps it, after run1 with WARMUP_SHAPES naming the benchmarked
#             shapes, e.g. WARMUP_SHAPES=gemma2-4l WARMUP_KINDS=prefill-single,prefill-batch WARMUP_CONFORMANCE=0 WARMUP_SOFTCAP_ONLY=1
#             RUN1_TESTS=1: only the prefill modules, with the GPU tests in the foreground). Also: parity-unfused (the
#             parity matrix without the residual_norm kind), costs-<operation> (re-sweeps one operation, e.g.
#             costs-rms_norm or costs-attention.decode, over a copy of the shipped sm90 table, returned under costs/),
#             profile-<arch> (prefill_profile.py --compiled: eager and compiled HF sdpa and LayerZero, PROFILE_SHAPES;
#             PROFILE_FLAGS="" profiles eager HF sdpa, LayerZero and Liger; <arch>-4l: an architecture as prefill_archs has it),
#             flex_options (Flex kernel options for Gemma-2's soft-capped prefill), fused_projections (q/k/v and
#             gate/up as one GEMM each), compile_strategies (per operation: traced or a custom op under torch.compile),
#             triton_prefill_attention (LayerZero's prefill attention kernel and its launch options),
#             dispatch_overhead (the host cost of dispatch on the GPU machine's CPU).
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

# pytest's own GPU replay test runs the same replay as in_context_replay.py, serially (185 s of a 414 s pytest
# run on 2026-12-01); the script beside pytest runs it in 9 processes and writes the committed table, so
# pytest leaves that one test to it.
REPLAY_TEST=tests/hf/test_in_context_conformance.py::test_gpu_recorded_calls_pass_on_every_eligible_gpu_kernel
tests_replay_parity() {  # pytest -m gpu on GPU 0 beside the in-context replay and the parity matrix on GPU $G1
  section "pytest -m gpu (GPU 0) | replay, parity (GPU $G1)"
  (CUDA_VISIBLE_DEVICES=0 LAYERZERO_FAIL_ON_RECOMPILE_LIMIT=1 timeout $((560 - SECONDS)) python3 -m pytest -m gpu -q -p no:cacheprovider \
     -rs --durations 15 tests --ignore=tests/multidevice --deselect "$REPLAY_TEST" > "$OUT/pytest-gpu.log" 2>&1
   echo "pytest rc=$?" >> "$OUT/pytest-gpu.log") &
  (export CUDA_VISIBLE_DEVICES=$G1
   timeout 240 python3 benchmarks/in_context_replay.py --jobs 9 --json "$OUT/replay.json" --md "$OUT/replay.md" > /tmp/replay.log 2>&1
   echo "replay rc=$?" >> /tmp/replay.log
   timeout 190 python3 benchmarks/parity_matrix.py --json "$OUT/parity.json" --md "$OUT/parity.md" > /tmp/parity.log 2>&1
   echo "parity rc=$?" >> /tmp/parity.log) &
  wait
}

warmup_selection() {  # what flashinfer_warmup.py compiles, the same in run1 and in run2's catch-up
  echo --shapes "${WARMUP_SHAPES:-small}" ${WARMUP_KINDS:+--kinds "$WARMUP_KINDS"} \
    $([ "${WARMUP_CONFORMANCE:-1}" = 0 ] && echo --no-conformance) $([ "${WARMUP_SOFTCAP_ONLY:-0}" = 1 ] && echo --model-softcap-only)
}

log_tests_summary() {  # after tests_replay_parity: the logs' last ${1:-6} lines and the recompile-limit message counts
  for f in /tmp/replay.log /tmp/parity.log; do echo "--- $f" >> "$LOG"; tail -"${1:-6}" "$f" >> "$LOG"; done
  section "recompile-limit warnings"
  grep -c "recompile_limit\|cache_size_limit" "$OUT/pytest-gpu.log" /tmp/replay.log /tmp/parity.log >> "$LOG" 2>&1
  tail -4 "$OUT/pytest-gpu.log" >> "$LOG"
}

run_bench() {  # one timing benchmark $1 (see "bench" above), its log in /tmp/$1.log
  local b=$1
  case $b in
    multi_gpu) [ "$NGPU" -ge 2 ] && timeout 260 python3 benchmarks/multi_gpu.py --shape 8b --layers 8 \
                 --json "$OUT/multi-gpu.json" --md "$OUT/multi-gpu.md" > /tmp/$b.log 2>&1 ;;
    # DECODE_ARCH picks the shape (default gemma2-2b), DECODE_EXTRA adds flags (e.g. --without-residual-norm)
    decode_ab) CUDA_VISIBLE_DEVICES=0 timeout 230 python3 benchmarks/decode_ab.py --arch "${DECODE_ARCH:-gemma2-2b}" \
                 --rounds "${DECODE_ROUNDS:-11}" --profile ${DECODE_EXTRA:-} --json "$OUT/decode-ab.json" --md "$OUT/decode-ab.md" > /tmp/$b.log 2>&1 ;;
    prefill_archs) CUDA_VISIBLE_DEVICES=0 timeout 330 python3 benchmarks/prefill_archs.py ${PREFILL_ARCHS:+--archs "$PREFILL_ARCHS"} \
                 --json "$OUT/prefill-archs.json" --md "$OUT/prefill-archs.md" > /tmp/$b.log 2>&1 ;;
    parity-unfused) CUDA_VISIBLE_DEVICES=0 timeout 200 python3 benchmarks/parity_matrix.py \
                 --kinds rms_norm,rope,mlp --json "$OUT/parity-unfused.json" --md "$OUT/parity-unfused.md" > /tmp/$b.log 2>&1 ;;
    # costs-<operation>: re-sweep one operation over a copy of the shipped sm90 table (a new kernel's rows,
    # e.g. costs-attention.decode for torch_eager_attention; several costs-* in one call add to one table);
    # COST_ARCH limits it to some architectures, COST_MAX_TOKENS to decode-sized buckets, COST_ONLY_MISSING=1 to
    # the buckets the table lacks (new ones added to the sweep)
    costs-*) mkdir -p "$OUT/costs" && { [ -f "$OUT/costs/sm90.json" ] || cp layerzero/data/costs/sm90.* "$OUT/costs/"; } \
                 && CUDA_VISIBLE_DEVICES=0 timeout $(( ${COST_SECONDS:-240} + 60 )) python3 -m layerzero.tuning.cost_sweep --out "$OUT/costs" \
                 --operations "${b#costs-}" ${COST_ARCH:+--arch "$COST_ARCH"} ${COST_MAX_TOKENS:+--max-tokens "$COST_MAX_TOKENS"} ${COST_ONLY_MISSING:+--only-missing} --max-seconds "${COST_SECONDS:-240}" > /tmp/$b.log 2>&1 ;;
    # Gemma-2's soft-capped prefill attention: Flex kernel options (and USE_TMA) swept at head_dim 256 or
    # FLEX_EXTRA="--head-dim 128 --heads 16/8"; FlashInfer's kernel beside them with BENCH_FLASHINFER=1
    flex_options) CUDA_VISIBLE_DEVICES=0 timeout 330 python3 benchmarks/flex_options.py ${FLEX_EXTRA:-} \
                 --json "$OUT/flex-options.json" --md "$OUT/flex-options.md" > /tmp/$b.log 2>&1 ;;
    # LayerZero's Triton prefill attention (soft-capped and plain) vs SDPA, Flex and FlashInfer, with its launch-option sweep
    triton_prefill_attention) CUDA_VISIBLE_DEVICES=0 timeout 330 python3 benchmarks/triton_prefill_attention.py \
                 --json "$OUT/triton-prefill-attention.json" --md "$OUT/triton-prefill-attention.md" > /tmp/$b.log 2>&1 ;;
    dispatch_overhead) timeout 200 python3 benchmarks/dispatch_overhead.py --json "$OUT/dispatch-overhead.json" \
                 --md "$OUT/dispatch-overhead.md" > /tmp/$b.log 2>&1 ;;
    # q/k/v and gate/up as one GEMM each: what it would save per architecture at the prefill token counts
    fused_projections) CUDA_VISIBLE_DEVICES=0 timeout 120 python3 benchmarks/fused_projections.py \
                 --json "$OUT/fused-projections.json" --md "$OUT/fused-projections.md" > /tmp/$b.log 2>&1 ;;
    # compile_strategies: each of norms, RoPE and the gated activations traced (inline) or a custom op (opaque)
    # under torch.compile, against eager LayerZero; CS_ARCH picks the shape (default llama-1b), CS_SHAPES the prefills
    compile_strategies) CUDA_VISIBLE_DEVICES=0 timeout ${CS_TIMEOUT:-400} python3 benchmarks/compile_strategies.py \
                 --arch "${CS_ARCH:-llama-1b}" --shapes "${CS_SHAPES:-8x1024}" ${CS_EXTRA:-} \
                 --json "$OUT/compile-strategies.json" --md "$OUT/compile-strategies.md" > /tmp/$b.log 2>&1 ;;
    # profile-<arch>: where the prefill's GPU time goes, eager and torch.compile'd (HF sdpa, LayerZero)
    profile-*) CUDA_VISIBLE_DEVICES=0 timeout 400 python3 benchmarks/prefill_profile.py --arch "${b#profile-}" ${PROFILE_FLAGS---compiled --no-liger} \
                 --shapes "${PROFILE_SHAPES:-1x4096,8x1024}" --json "$OUT/$b.json" --md "$OUT/$b.md" > /tmp/$b.log 2>&1 ;;
    # one e2e per call (E2E_EXTRA adds flags, e.g. --no-other-compile-strategy): with the compiled variants (HF sdpa, LayerZero opaque and inline) and the alternating
    # Liger rounds a Gemma2 run is estimated at ~500 s
    e2e-*) a=${b#e2e-}; CUDA_VISIBLE_DEVICES=0 timeout ${E2E_TIMEOUT:-560} python3 benchmarks/e2e.py --arch "$a" --skip-eager --without-residual-norm \
                 --compile-shapes "${E2E_COMPILE_SHAPES:-8x1024}" --compile-with-cache --repeats 3 ${E2E_EXTRA:-} --json "$OUT/$b.json" --md "$OUT/$b.md" > /tmp/$b.log 2>&1 ;;
  esac
  echo "$b rc=$?" >> /tmp/$b.log; tail -12 /tmp/$b.log >> "$LOG"
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
G1=1  # the second GPU's jobs; on a one-GPU machine they share GPU 0
[ "$NGPU" -ge 2 ] || G1=0
# Install the carried wheels once per machine: reinstalled, apache-tvm-ffi's headers get new mtimes, and
# ninja then rebuilds every FlashInfer module that includes them (seen 2026-12-01: the RoPE, RMSNorm and
# decode modules compiled again in each of three calls, 55-150 s each).
want=$(ls .whl 2>/dev/null | sort | md5sum | cut -c1-32)
if [ -d .whl ] && [ "$(cat "$site/.carried-wheels" 2>/dev/null)" != "$want" ]; then
  pipi --upgrade --target "$site" .whl/*.whl >/dev/null 2>&1 && echo "$want" > "$site/.carried-wheels"
fi
with_fi versions
if [ "$stage" = run1 ]; then  # results in one archive: a call returns at most 8 files
  [ -d .whl-big ] && install_flashinfer
  R=/tmp/run1; rm -rf $R; mkdir -p $R
  # FlashInfer's JIT is the long pole (a batch-prefill module alone took ~575 s on one H200 host): it starts
  # in the first second, on every core, and is never interrupted before the call's end. Killed part-way, a
  # module restarts from nothing in run2 (measured 2026-12-01: run1 left it 234 s after 350 s of benchmarks,
  # run2 gave it 200 s more, and pytest still found modules missing).
  section "FlashInfer JIT of what run2 loads (every core, from the start)"
  (with_fi env CUDA_VISIBLE_DEVICES=$G1 MAX_JOBS=${JIT_MAX_JOBS:-4} timeout 575 python3 benchmarks/flashinfer_warmup.py \
     --jobs 24 $(warmup_selection) --out "$R/warmup.json" > /tmp/warmup.log 2>&1
   echo "warmup rc=$?" >> /tmp/warmup.log) &
  # beside it, the parts of the tier that need no FlashInfer and no quiet host: device-time kernel sweep
  # (GPU 0) and the cross-device tests (2 GPUs); RUN1_TESTS=1: instead, pytest -m gpu beside the replay and
  # the parity matrix (the recheck's tests), for a benchmark-only FlashInfer JIT (WARMUP_SHAPES, WARMUP_KINDS,
  # WARMUP_CONFORMANCE=0, WARMUP_SOFTCAP_ONLY=1) followed by a bench call with BENCH_FLASHINFER=1
  if [ "${RUN1_TESTS:-0}" = 1 ]; then
    tests_replay_parity
    log_tests_summary
  else
    section "kernel sweep (GPU 0), cross-device tests (2 GPUs), FlashInfer off the path"
    CUDA_VISIBLE_DEVICES=0 timeout 200 python3 benchmarks/kernel_sweep.py --out "$R/kernels" > /tmp/sweep.log 2>&1; echo "sweep rc=$?" >> /tmp/sweep.log
  fi
  if [ "$NGPU" -ge 2 ]; then
    timeout 150 python3 -m pytest -m gpu -q -p no:cacheprovider -rs tests/multidevice > "$R/cross-device.log" 2>&1
    echo "cross-device rc=$?" >> "$R/cross-device.log"; tail -3 "$R/cross-device.log" >> "$LOG"
  fi
  wait
  for f in /tmp/warmup.log /tmp/sweep.log; do [ -f $f ] && { echo "--- $f" >> "$LOG"; tail -12 "$f" >> "$LOG"; }; done
  du -sh $CACHE/* >> "$LOG" 2>&1
  cp "$LOG" $R/; tar czf "$OUT/run1.tgz" -C $R .
  tail -40 "$LOG"; exit
fi
export PYTHONPATH=$fi_site:$PYTHONPATH  # FlashInfer loads the modules run1 compiled into its workspace
if [ "$stage" = run2 ]; then
  if ! grep -q "failed: none" /tmp/warmup.log 2>/dev/null; then
    section "FlashInfer JIT: what run1 left unfinished"
    env CUDA_VISIBLE_DEVICES=$G1 MAX_JOBS=2 timeout 200 python3 benchmarks/flashinfer_warmup.py --jobs 24 $(warmup_selection) \
      > /tmp/warmup2.log 2>&1; tail -3 /tmp/warmup2.log >> "$LOG"
  fi
  tests_replay_parity
  log_tests_summary 15
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
  log_tests_summary
elif [ "$stage" = bench ]; then  # timing: nothing else runs while a host-bound measurement does
  # FlashInfer off the path unless its JIT covered these shapes (run1 with WARMUP_SHAPES=...; BENCH_FLASHINFER=1):
  # an uncompiled configuration costs minutes of JIT inside a timed benchmark
  [ "${BENCH_FLASHINFER:-0}" = 1 ] || export PYTHONPATH=$site:$PWD
  for b in ${BENCHES:-multi_gpu decode_ab prefill_archs}; do
    section "$b (alone on the machine)"
    run_bench "$b"
  done
fi
tail -40 "$LOG"
