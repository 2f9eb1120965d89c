#!/usr/bin/env bash
# The GPU verification, in three calls of the lent GPU machine (2 x H200, `nvidia-h200-x2`): a 1-minute
# install and two stages of at most 10 minutes, each writing at most 8 files under $OUT. Procedure and the
# reasons for its order: docs/gpu_verification.md.
#
#   install - FlashInfer (carry .whl-big; ~60 MB, it travels alone) into /tmp/site, kept while the machine
#             stays warm (call the next stage within 30 s).
#   bench   - (carry .whl: liger-kernel, apache-tvm-ffi) starts FlashInfer's JIT builds of exactly the
#             configurations the tests and the in-context replay use (by running them once), in the background
#             at low priority, then measures: multi-GPU
#             parity and speed (device map and tensor parallel, both GPUs), then end-to-end models on one
#             GPU each (Llama-1B and Qwen3-1.7B on GPU 0, Gemma2-2B and the softcap decode kernel on GPU 1).
#   verify  - (carry .whl) pytest -m gpu on GPU 0 (FlashInfer now compiled) while GPU 1 replays the calls
#             real models make on every eligible kernel and runs the parity matrix of the 9 architectures;
#             then the cross-device test on both GPUs and the kernel sweep.
# LAYERZERO_COMMIT names the commit measured (the machine's copy of the tree has no usable git history).
set -uo pipefail
stage=${1:?stage: install|bench|verify}
OUT=${OUT:-/tmp/lz-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
site=/tmp/site
pipi() { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$@"; }
if [ "$stage" = install ]; then
  pipi .whl-big/*.whl && echo "flashinfer installed"; exit
fi
[ -d .whl ] && pipi --upgrade .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=$site:$PWD
LOG=$OUT/logs.txt
python3 - <<'PY' >> "$LOG" 2>&1
import importlib, os, torch
print("commit", os.environ.get("LAYERZERO_COMMIT"), "| devices", [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
      "| torch", torch.__version__, "cuda", torch.version.cuda)
for m in ("triton", "transformers", "accelerate", "flashinfer", "liger_kernel", "flash_attn", "xformers"):
    try:
        mod = importlib.import_module(m); print(" ", m, getattr(mod, "__version__", "?"))
    except Exception as e:
        print(" ", m, "MISSING", type(e).__name__, str(e)[:120])
PY
section() { echo "=== $1 ($(date +%T))" >> "$LOG"; }
if [ "$stage" = bench ]; then
  # FlashInfer JIT for the verify stage: one process per kernel family, niced, while the benchmarks run.
  setsid nohup nice -n 19 bash -c 'export MAX_JOBS=6 CUDA_VISIBLE_DEVICES=1; for k in prefill decode rms_norm rope swiglu; do
      timeout 500 python3 -m pytest -q -p no:cacheprovider -m gpu tests/kernels/test_gpu_conformance.py -k "flashinfer_$k" &
    done
    timeout 500 python3 benchmarks/in_context_replay.py --json /tmp/replay-warm.json > /tmp/replay-warm.log 2>&1 &
    wait' > /tmp/flashinfer-warmup.log 2>&1 < /dev/null &
  section multi_gpu
  timeout 200 python3 benchmarks/multi_gpu.py --shape 8b --layers 8 --json "$OUT/multi-gpu.json" --md "$OUT/multi-gpu.md" \
    >> "$LOG" 2>&1; echo "multi_gpu rc=$?" >> "$LOG"
  section e2e
  (export CUDA_VISIBLE_DEVICES=0
   timeout 240 python3 benchmarks/e2e.py --arch llama-1b --skip-eager --repeats 3 --json "$OUT/e2e-llama-1b.json" \
     --md "$OUT/e2e-llama-1b.md" > /tmp/e2e-llama-1b.log 2>&1; echo "e2e llama-1b rc=$?" >> /tmp/e2e-llama-1b.log) &
  (export CUDA_VISIBLE_DEVICES=1
   for a in gemma2-2b qwen3-1.7b; do
     timeout 150 python3 benchmarks/e2e.py --arch $a --no-static --skip-eager --repeats 3 --json "$OUT/e2e-$a.json" \
       --md "$OUT/e2e-$a.md" > /tmp/e2e-$a.log 2>&1; echo "e2e $a rc=$?" >> /tmp/e2e-$a.log
   done
   timeout 45 python3 benchmarks/decode_softcap.py --json /tmp/ds.json --md /tmp/ds.md > /tmp/ds.log 2>&1) &
  wait
  for f in /tmp/e2e-*.log /tmp/ds.log; do echo "--- $f" >> "$LOG"; tail -12 "$f" >> "$LOG"; done
  # one JSON and one markdown file for the three models and the decode kernel (the call returns 8 files)
  python3 - "$OUT" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1]); merged, md = {}, []
for name in ("e2e-llama-1b", "e2e-qwen3-1.7b", "e2e-gemma2-2b", "/tmp/ds"):
    j = pathlib.Path(name + ".json") if name.startswith("/") else out / (name + ".json")
    m = j.with_suffix(".md")
    if j.exists():
        merged[j.stem] = json.loads(j.read_text()); j.unlink()
    if m.exists():
        md.append(m.read_text()); m.unlink()
(out / "e2e.json").write_text(json.dumps(merged, indent=2)); (out / "e2e.md").write_text("\n\n".join(md))
PY
  section "flashinfer warm-up so far"; tail -5 /tmp/flashinfer-warmup.log >> "$LOG"
elif [ "$stage" = verify ]; then
  section "flashinfer warm-up"; tail -8 /tmp/flashinfer-warmup.log >> "$LOG" 2>/dev/null
  (CUDA_VISIBLE_DEVICES=0 timeout 330 python3 -m pytest -m gpu -q -p no:cacheprovider -rs tests --ignore=tests/multidevice \
     > "$OUT/pytest-gpu.log" 2>&1; echo "pytest rc=$?" >> "$OUT/pytest-gpu.log") &
  (export CUDA_VISIBLE_DEVICES=1
   timeout 150 python3 benchmarks/in_context_replay.py --json "$OUT/replay.json" --md "$OUT/replay.md" > /tmp/replay.log 2>&1
   echo "replay rc=$?" >> /tmp/replay.log
   timeout 180 python3 benchmarks/parity_matrix.py --json "$OUT/parity.json" --md "$OUT/parity.md" > /tmp/parity.log 2>&1
   echo "parity rc=$?" >> /tmp/parity.log) &
  wait
  for f in /tmp/replay.log /tmp/parity.log; do echo "--- $f" >> "$LOG"; tail -15 "$f" >> "$LOG"; done
  section cross-device
  timeout 120 python3 -m pytest -m gpu -q -p no:cacheprovider -rs tests/multidevice >> "$LOG" 2>&1
  section kernel-sweep
  timeout 60 python3 benchmarks/kernel_sweep.py --out "$OUT/kernels" >> /tmp/sweep.log 2>&1; tail -3 /tmp/sweep.log >> "$LOG"
  tail -30 "$OUT/pytest-gpu.log"
fi
tail -40 "$LOG"
