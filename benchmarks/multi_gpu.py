"""Multi-GPU: a LayerZero-patched Llama-shaped model split over two GPUs, against the same model unpatched.

Two ways of splitting a model, each measured unpatched, then patched (``layerzero_hf.patch(model,
attention=True)``), on the same weights in the same process:

* ``device_map="auto"`` (accelerate, one process; the decoder layers are balanced over the visible GPUs);
* ``tp_plan="auto"`` (Transformers tensor parallel, spelled ``DistributedConfig(tp_plan="auto")`` in 5.17;
  one process per GPU under ``torch.distributed.run``, NCCL). This script launches those processes itself.

For each: logits parity vs the unpatched model (max/mean abs diff of float logits on one prompt, top-1
agreement, greedy tokens), the noise floor that parity is judged against (HF eager vs HF sdpa on the same
weights and placement: two correct implementations disagree by this much in bf16), prefill tokens/s and
decode ms/step unpatched vs patched, what the patch bound or skipped (and why), which kernels ran, and the
per-device circuit keys the dispatcher created (``kernel@cuda:N``: one breaker per kernel per GPU).

Random weights (no download): the checkpoint is built once, saved with ``save_pretrained`` and loaded through
the real ``from_pretrained`` paths. ``--cpu`` runs the same code paths on CPU for CI: a tiny fp32 Llama, the
device map split over cpu + disk offload (accelerate installs the same dispatch hooks), tensor parallel over
two gloo processes; parity must then hold to 1e-4.

    python benchmarks/multi_gpu.py --json benchmarks/results/multi_gpu.json --md benchmarks/results/multi_gpu.md
    python benchmarks/multi_gpu.py --cpu --json /tmp/multi_gpu.json --md /tmp/multi_gpu.md     # CPU smoke test

Exit status: 0 when every requested setup ran and passed parity, 1 when a setup failed or parity did not
hold, 2 when the machine cannot run the GPU setups (fewer than 2 GPUs): the JSON and markdown then say
exactly what was not run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPES: dict[str, dict[str, Any]] = {
    # Llama-3.1-8B
    "8b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
               intermediate_size=14336, vocab_size=128256, head_dim=128, max_position_embeddings=8192,
               rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
               tie_word_embeddings=False),
    # Llama-3.2-1B
    "1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
               intermediate_size=8192, vocab_size=128256, head_dim=64, max_position_embeddings=8192,
               rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
               tie_word_embeddings=True),
    # the CPU smoke test: 2 kv heads split over 2 ranks, 2 layers split over 2 placements
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128, vocab_size=128, head_dim=16, max_position_embeddings=512,
                 rms_norm_eps=1e-5, initializer_range=0.1, tie_word_embeddings=False),
}
FP32_TOL = 1e-4
# The deterministic check on GPUs: the same weights upcast to fp32, TF32 off. Two correct fp32 paths then
# differ by accumulation order only (~1e-5 of the logits' scale after a few dozen layers), so a wrong kernel
# or a misplaced tensor shows up orders of magnitude above this bound, where bf16's noise floor hides it.
FP32_GPU_REL_TOL = 1e-3
# The lent multi-GPU hosts must never use NVLink multicast (it can take the shared GPUs out of service); the
# launcher passes these to every rank even if the caller's environment lost them.
NO_MULTICAST_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
CPU_DEFAULTS = dict(prefill="1x32,2x16", parity_len=24, prompt=8, steps=6, greedy=6, warmup=1, repeats=2, rounds=1)
GPU_DEFAULTS = dict(prefill="1x2048,8x512", parity_len=512, prompt=128, steps=32, greedy=16, warmup=2, repeats=5,
                    rounds=3)


# ---------------------------------------------------------------------------------------------- helpers
def _sync(device_type: str) -> None:
    """Every GPU for a device map (the model finishes on the last one); only its own GPU for a tensor-parallel
    rank (touching the other GPU would create a second CUDA context in each rank)."""
    if device_type != "cuda":
        return
    if "RANK" in os.environ:
        torch.cuda.synchronize()
        return
    for i in range(torch.cuda.device_count()):
        torch.cuda.synchronize(i)


def _median_seconds(fn: Callable[[], Any], device_type: str, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    _sync(device_type)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device_type)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _ids(shape: tuple[int, int], vocab: int, device: Any, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, shape, generator=g).to(device)


def _parse_shapes(text: str) -> list[tuple[int, int]]:
    try:
        return [tuple(int(v) for v in item.lower().split("x")) for item in text.split(",") if item]  # type: ignore[misc]
    except ValueError:
        raise SystemExit(f"--prefill {text!r}: expected BATCHxSEQ[,BATCHxSEQ...], e.g. 1x2048,8x512") from None


class _StepClock:
    """Logits processor that timestamps each decode step after a sync, so ms/step excludes the prefill."""

    def __init__(self, device_type: str):
        self.device_type = device_type
        self.stamps: list[float] = []

    def __call__(self, input_ids, scores):
        _sync(self.device_type)
        self.stamps.append(time.perf_counter())
        return scores


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(ids, use_cache=False).logits
    if hasattr(out, "full_tensor"):  # a DTensor output under tensor parallel
        out = out.full_tensor()
    return out.float().cpu()


def _greedy(model, ids: torch.Tensor, n: int) -> list[list[int]]:
    out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0, eos_token_id=None)
    return out[:, ids.shape[1]:].tolist()


def measure(model, args: argparse.Namespace, input_device: Any, device_type: str, vocab: int) -> dict[str, Any]:
    """Prefill tokens/s per shape (``use_cache=False``, ``logits_to_keep=1`` so the vocab head does not
    dominate) and decode ms/step of greedy ``generate`` with a dynamic cache (steps 2..N)."""
    from transformers import LogitsProcessorList

    entry: dict[str, Any] = {"prefill_tokens_per_s": {}, "decode_ms_per_step": None}
    for b, s in args.prefill_shapes:
        ids = _ids((b, s), vocab, input_device, seed=b * 1000 + s)

        def run():
            with torch.no_grad():
                model(ids, use_cache=False, logits_to_keep=1)

        try:
            entry["prefill_tokens_per_s"][f"{b}x{s}"] = b * s / _median_seconds(run, device_type, args.warmup,
                                                                               args.repeats)
        except torch.OutOfMemoryError as exc:
            entry["prefill_tokens_per_s"][f"{b}x{s}"] = None
            entry.setdefault("errors", []).append(f"prefill {b}x{s}: out of memory: {str(exc).splitlines()[0]}")
            gc.collect()
            torch.cuda.empty_cache()
    prompt = _ids((1, args.prompt), vocab, input_device, seed=11)
    per_step: list[float] = []
    for i in range(args.repeats + 1):  # the first run warms up
        clock = _StepClock(device_type)
        model.generate(prompt, max_new_tokens=args.steps, min_new_tokens=args.steps, do_sample=False, pad_token_id=0,
                       eos_token_id=None, logits_processor=LogitsProcessorList([clock]))
        if i:
            per_step += [b - a for a, b in zip(clock.stamps[1:], clock.stamps[2:])]
    entry["decode_ms_per_step"] = statistics.median(per_step) * 1e3 if per_step else None
    return entry


def compare(reference: torch.Tensor, other: torch.Tensor) -> dict[str, float]:
    diff = (other - reference).abs()
    return {"max_abs_diff": diff.max().item(), "mean_abs_diff": diff.mean().item(),
            "top1_agreement": (other.argmax(-1) == reference.argmax(-1)).float().mean().item()}


def verdict(parity: dict[str, float], floor: dict[str, float], dtype: torch.dtype) -> tuple[bool, str]:
    """fp32: within 1e-4. bf16/fp16: within twice the disagreement of HF's own eager and sdpa paths."""
    diff = parity["max_abs_diff"]
    if dtype == torch.float32:
        return diff <= FP32_TOL, f"max abs diff {diff:.3g} vs fp32 tolerance {FP32_TOL:g}"
    bound = 2 * floor["max_abs_diff"]
    return diff <= bound, f"max abs diff {diff:.3g} vs 2 x noise floor (HF eager vs sdpa) {bound:.3g}"


def run_variants(model, args: argparse.Namespace, input_device: Any, device_type: str, vocab: int,
                 dtype: torch.dtype) -> dict[str, Any]:
    """Unpatched (HF sdpa), the noise floor (HF eager), then patched; the model is unpatched on return."""
    import layerzero_hf

    parity_ids = _ids((1, args.parity_len), vocab, input_device, seed=7)
    greedy_ids = _ids((1, args.prompt), vocab, input_device, seed=13)
    out: dict[str, Any] = {}

    model.set_attn_implementation("sdpa")
    reference = _logits(model, parity_ids)
    ref_tokens = _greedy(model, greedy_ids, args.greedy)

    model.set_attn_implementation("eager")
    out["noise_floor_eager_vs_sdpa"] = compare(reference, _logits(model, parity_ids))
    model.set_attn_implementation("sdpa")

    if args.profile:
        out["profile_unpatched"] = profile_decode(model, greedy_ids, device_type)
    report = layerzero_hf.patch(model, attention=True)
    try:
        patched_logits = _logits(model, parity_ids)
        tokens = _greedy(model, greedy_ids, args.greedy)
        if args.profile:
            out["profile_patched"] = profile_decode(model, greedy_ids, device_type)
        snap = layerzero_hf.model_telemetry(model)["snapshot"]
        orch = layerzero_hf.orchestrator_of(model)
        circuits = getattr(orch, "circuits", None)
        out["patch"] = {
            "patched": report.counts(),
            "skipped": _skip_summary(report),
            "attn_implementation": report.attn_implementation,
            "kernels": {k: v.calls for k, v in sorted(snap.per_kernel.items()) if v.calls},
            "operations": dict(snap.per_operation),
            "failures": snap.failure_count,
            "fallbacks": snap.fallback_count,
            "circuit_keys": sorted(circuits.get_all_stats()) if circuits is not None else [],
        }
    finally:
        layerzero_hf.unpatch(model)
    out.update(timed_rounds(model, args, input_device, device_type, vocab))
    parity = compare(reference, patched_logits)
    same = sum(1 for a, b in zip(ref_tokens[0], tokens[0]) if a == b)
    leading = next((i for i, (a, b) in enumerate(zip(ref_tokens[0], tokens[0])) if a != b), len(tokens[0]))
    parity.update(greedy_tokens=len(tokens[0]), greedy_equal=same, greedy_equal_prefix=leading)
    ok, why = verdict(parity, out["noise_floor_eager_vs_sdpa"], dtype)
    parity.update(passed=ok, criterion=why)
    out["parity_patched_vs_unpatched"] = parity
    if dtype != torch.float32 and args.fp32_check:
        out["fp32_check"] = fp32_check(model, parity_ids, greedy_ids, args.greedy)
    return out


def timed_rounds(model, args: argparse.Namespace, input_device: Any, device_type: str, vocab: int) -> dict[str, Any]:
    """Unpatched and patched timings alternating over ``args.rounds`` rounds (patching is per instance and
    reversible, so both use the same weights and placement): a slow stretch of the host or a GPU clock
    change hits both alike. Speed-ups are the median of the per-round ratios; the variants' own numbers
    are medians over rounds."""
    import layerzero_hf

    rounds: list[dict[str, Any]] = []
    for _ in range(args.rounds):
        base = measure(model, args, input_device, device_type, vocab)
        layerzero_hf.patch(model, attention=True)
        try:
            new = measure(model, args, input_device, device_type, vocab)
        finally:
            layerzero_hf.unpatch(model)
        rounds.append({"unpatched": base, "patched": new, "speedup": _speedups(base, new)})

    def med(values: list[Any]) -> Any:
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None

    def combine(entries: list[dict[str, Any]]) -> dict[str, Any]:
        keys = entries[0]["prefill_tokens_per_s"]
        return {"prefill_tokens_per_s": {k: med([e["prefill_tokens_per_s"].get(k) for e in entries]) for k in keys},
                "decode_ms_per_step": med([e["decode_ms_per_step"] for e in entries])}

    speedups = [r["speedup"] for r in rounds]
    return {
        "unpatched": combine([r["unpatched"] for r in rounds]),
        "patched": combine([r["patched"] for r in rounds]),
        "speedup": {"prefill": {k: med([sp["prefill"].get(k) for sp in speedups]) for k in speedups[0]["prefill"]},
                    "decode": med([sp["decode"] for sp in speedups])},
        "rounds": speedups,
    }


def fp32_check(model, parity_ids: torch.Tensor, greedy_ids: torch.Tensor, greedy: int) -> dict[str, Any]:
    """The deterministic parity check: the model's weights upcast to fp32 in place (placement and sharding
    kept), TF32 off, logits and greedy tokens unpatched vs patched. With bf16's noise floor at top-1 0.8 a
    greedy comparison says little; in fp32 the two paths must agree to ``FP32_GPU_REL_TOL`` of the logits'
    scale and token for token."""
    import layerzero_hf

    matmul_tf32, cudnn_tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        model.float()
        model.set_attn_implementation("sdpa")
        reference = _logits(model, parity_ids)
        ref_tokens = _greedy(model, greedy_ids, greedy)
        layerzero_hf.patch(model, attention=True)
        try:
            patched = _logits(model, parity_ids)
            tokens = _greedy(model, greedy_ids, greedy)
        finally:
            layerzero_hf.unpatch(model)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul_tf32, cudnn_tf32
    parity = compare(reference, patched)
    scale = reference.abs().max().item()
    bound = FP32_GPU_REL_TOL * max(scale, 1e-6)
    same = sum(1 for a, b in zip(ref_tokens[0], tokens[0]) if a == b)
    parity.update(logit_scale=scale, bound=bound, greedy_tokens=len(tokens[0]), greedy_equal=same,
                  passed=parity["max_abs_diff"] <= bound and same == len(tokens[0]),
                  criterion=f"fp32, TF32 off: max abs diff <= {FP32_GPU_REL_TOL:g} x max |logit| and every "
                            "greedy token equal")
    return parity


def profile_decode(model, prompt: torch.Tensor, device_type: str, steps: int = 8, top: int = 25) -> list[dict]:
    """torch.profiler over a short greedy decode: the ops with the most self CPU time (where a host-bound
    decode step goes) with their call counts and device time."""
    from torch.profiler import ProfilerActivity, profile

    _greedy(model, prompt, 2)  # warm
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device_type == "cuda" else [])
    with profile(activities=activities) as prof:
        _greedy(model, prompt, steps)
    rows = []
    for e in sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:top]:
        rows.append({"name": e.key[:80], "calls": e.count, "self_cpu_us": round(e.self_cpu_time_total, 1),
                     "device_us": round(getattr(e, "self_device_time_total", 0.0) or 0.0, 1)})
    return rows


def _skip_summary(report) -> dict[str, Any]:
    """Skipped modules grouped by reason (a device map skips dozens for the same one)."""
    by_reason: dict[str, list[str]] = {}
    for s in report.skipped:
        by_reason.setdefault(s.reason, []).append(s.path)
    return {why: {"count": len(paths), "examples": paths[:3]} for why, paths in by_reason.items()}


def _speedups(base: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    pre = {k: (v / base["prefill_tokens_per_s"][k]) if v and base["prefill_tokens_per_s"].get(k) else None
           for k, v in new["prefill_tokens_per_s"].items()}
    dec = (base["decode_ms_per_step"] / new["decode_ms_per_step"]
           if base.get("decode_ms_per_step") and new.get("decode_ms_per_step") else None)
    return {"prefill": pre, "decode": dec}


# ---------------------------------------------------------------------------------------------- checkpoint
def build_checkpoint(path: Path, shape: str, layers: int | None, dtype: torch.dtype, device: str) -> dict[str, Any]:
    """Random weights, saved with ``save_pretrained``. 1-D weights (norms) are perturbed so a kernel that
    ignored them would show in parity."""
    import transformers

    cfg = dict(SHAPES[shape])
    if layers:
        cfg["num_hidden_layers"] = layers
    config = transformers.LlamaConfig(**cfg, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.LlamaForCausalLM._from_config(config, dtype=dtype)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(path)
    del model
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return {k: v for k, v in cfg.items() if k != "rope_parameters"}


# ---------------------------------------------------------------------------------------------- device_map
def cpu_device_map(num_layers: int) -> dict[str, str]:
    """First half of the layers in memory, the rest (and the head) offloaded to disk: Transformers only
    dispatches (installs accelerate's hooks) when a map has more than one placement."""
    half = max(1, num_layers // 2)
    dm = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu"}
    dm.update({f"model.layers.{i}": ("cpu" if i < half else "disk") for i in range(num_layers)})
    dm.update({"model.norm": "disk", "lm_head": "disk"})
    return dm


def _placement_summary(device_map: dict[str, Any]) -> dict[str, Any]:
    layers: dict[str, int] = {}
    for name, dev in device_map.items():
        key = str(dev) if isinstance(dev, str) else f"cuda:{dev}" if isinstance(dev, int) else str(dev)
        layers[key] = layers.get(key, 0) + (1 if ".layers." in name else 0)
    return {"decoder_layers_per_device": layers, "modules": len(device_map)}


def run_device_map(args: argparse.Namespace, ckpt: Path, dtype: torch.dtype, vocab: int, num_layers: int) -> dict:
    import transformers

    if args.cpu:
        offload = Path(tempfile.mkdtemp(prefix="lz_offload_"))
        device_map: Any = cpu_device_map(num_layers)
        kwargs = dict(device_map=device_map, offload_folder=offload)
        device_type = "cpu"
    else:
        kwargs = dict(device_map="auto")
        device_type = "cuda"
    t0 = time.perf_counter()
    model = transformers.AutoModelForCausalLM.from_pretrained(ckpt, dtype=dtype, attn_implementation="sdpa",
                                                              **kwargs).eval()
    load_s = time.perf_counter() - t0
    hf_map = dict(getattr(model, "hf_device_map", {}) or {})
    placements = {str(v) for v in hf_map.values()}
    result: dict[str, Any] = {"load_s": load_s, "placement": _placement_summary(hf_map),
                              "accelerate_hooks": sum(1 for m in model.modules() if hasattr(m, "_hf_hook"))}
    if len(placements) < 2:
        result["error"] = (f"device_map did not split the model (placements {sorted(placements)}); "
                           "a split needs 2 visible GPUs" if not args.cpu else "no split")
        return result
    input_device = model.get_input_embeddings().weight.device
    if input_device.type == "meta":
        input_device = torch.device("cpu")
    result.update(run_variants(model, args, input_device, device_type, vocab, dtype))
    del model
    gc.collect()
    if device_type == "cuda":
        torch.cuda.empty_cache()
    return result


# ---------------------------------------------------------------------------------------------- tensor parallel
def _load_tp(ckpt: Path, dtype: torch.dtype):
    import transformers

    try:
        from transformers.distributed import DistributedConfig
    except ImportError:  # Transformers before the DistributedConfig spelling
        return transformers.AutoModelForCausalLM.from_pretrained(ckpt, dtype=dtype, tp_plan="auto",
                                                                 attn_implementation="sdpa")
    return transformers.AutoModelForCausalLM.from_pretrained(ckpt, dtype=dtype, attn_implementation="sdpa",
                                                             distributed_config=DistributedConfig(tp_plan="auto"))


def tp_rank_main(args: argparse.Namespace) -> int:
    """One rank under torch.distributed.run. Rank 0 writes the part file with every rank's parity."""
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    dtype = torch.float32 if args.cpu else torch.bfloat16
    device_type = "cpu" if args.cpu else "cuda"
    result: dict[str, Any] = {}
    try:
        t0 = time.perf_counter()
        model = _load_tp(args.checkpoint, dtype).eval()
        result["load_s"] = time.perf_counter() - t0
        result["world_size"] = dist.get_world_size()
        result["backend"] = dist.get_backend()
        w = model.model.layers[0].self_attn.q_proj.weight
        result["sharding"] = {"q_proj": type(w).__name__, "global_shape": list(w.shape),
                              "local_shape": list(w.to_local().shape) if hasattr(w, "to_local") else list(w.shape)}
        input_device = torch.device("cpu") if args.cpu else torch.device("cuda", torch.cuda.current_device())
        result["device"] = str(input_device)
        result.update(run_variants(model, args, input_device, device_type, model.config.vocab_size, dtype))
    except Exception as exc:  # noqa: BLE001 - reported, and the other rank's collective fails too
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["traceback"] = traceback.format_exc()[-4000:]
    gathered: list[Any] = [None] * dist.get_world_size()
    try:
        dist.all_gather_object(gathered, {"rank": rank, "parity": result.get("parity_patched_vs_unpatched"),
                                          "error": result.get("error"), "device": result.get("device"),
                                          "circuit_keys": result.get("patch", {}).get("circuit_keys")})
    except Exception as exc:  # noqa: BLE001
        gathered = [{"rank": rank, "error": f"all_gather_object failed: {exc}"}]
    if rank == 0:
        result["ranks"] = gathered
        Path(args.part).write_text(json.dumps(result, indent=2))
    dist.destroy_process_group()
    return 0 if "error" not in result else 1


def run_tp(args: argparse.Namespace, ckpt: Path) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="lz_tp_"))
    part, logs = workdir / "tp.json", workdir / "logs"
    # --log-dir/--tee keep each rank's own stderr: torchrun's summary of a dead rank names the signal only.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(args.nproc),
           "--log-dir", str(logs), "--tee", "3",
           str(Path(__file__).resolve()), "--mode", "tp", "--checkpoint", str(ckpt), "--part", str(part),
           "--prefill", args.prefill, "--parity-len", str(args.parity_len), "--prompt", str(args.prompt),
           "--steps", str(args.steps), "--greedy", str(args.greedy), "--warmup", str(args.warmup),
           "--repeats", str(args.repeats)] + (["--cpu"] if args.cpu else []) + (
               ["--profile"] if args.profile else []) + ([] if args.fp32_check else ["--no-fp32-check"])
    env = {**os.environ, **NO_MULTICAST_ENV,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    if args.cpu:
        env["OMP_NUM_THREADS"] = "1"
    # A launcher that fails before any rank reports (e.g. another process took the rendezvous port that
    # --standalone picked) is retried once; a rank that ran and failed is a result, not retried.
    for attempt in (1, 2):
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.tp_timeout)
        except subprocess.TimeoutExpired as exc:
            tail = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
            return {"error": f"tensor-parallel run exceeded {args.tp_timeout} s", "stderr_tail": tail[-3000:]}
        if part.exists():
            break
    else:
        return {"error": f"tensor-parallel run wrote no result in 2 attempts (rc={proc.returncode})",
                "stderr_tail": proc.stderr[-3000:]}
    result = json.loads(part.read_text())
    result["returncode"] = proc.returncode
    result["launch_attempts"] = attempt
    if proc.returncode and "error" not in result:
        result["error"] = f"a rank failed (rc={proc.returncode})"
        result["stderr_tail"] = proc.stderr[-3000:]
        result["rank_stderr_tails"] = _rank_stderr_tails(logs)
    return result


def _rank_stderr_tails(logs: Path, chars: int = 1500) -> dict[str, str]:
    """The end of each rank's stderr.log under torchrun's --log-dir (layout: <run>/attempt_<n>/<rank>/)."""
    tails = {}
    for log in sorted(logs.glob("*/attempt_*/*/stderr.log")):
        text = "\n".join(line for line in log.read_text(errors="replace").splitlines()
                         if line.strip() and "Loading weights" not in line)
        tails[f"{log.parent.parent.name}/rank{log.parent.name}"] = text[-chars:]
    return tails


# ---------------------------------------------------------------------------------------------- orchestration
def versions() -> dict[str, Any]:
    import transformers

    out: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                           "transformers": transformers.__version__, "accelerate": None, "git": None}
    try:
        import accelerate

        out["accelerate"] = accelerate.__version__
    except ImportError:
        pass
    try:
        # LAYERZERO_COMMIT: set by benchmarks/gpu_run.sh, whose machine has no usable git history
        out["git"] = os.environ.get("LAYERZERO_COMMIT") or subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
            cwd=ROOT).stdout.strip() or None
    except OSError:
        pass
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    import layerzero_hf  # noqa: F401  (registers attn_implementation="layerzero")

    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    dtype = torch.float32 if args.cpu else torch.bfloat16
    result: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "mode": "cpu" if args.cpu else "gpu",
        "device": ("cpu: " + (platform.processor() or platform.machine())) if args.cpu else
        ", ".join(torch.cuda.get_device_name(i) for i in range(n_gpus)) or "no CUDA device",
        "gpus": n_gpus, "dtype": str(dtype).removeprefix("torch."), "shape": args.shape,
        "versions": versions(), "setups": {}, "not_run": [],
    }
    wanted = ["device_map", "tp"] if args.mode == "all" else [args.mode]
    if not args.cpu and n_gpus < 2:
        why = f"needs 2 CUDA GPUs in one host, this machine has {n_gpus}"
        result["not_run"] = [f"{name}: {why}" for name in wanted]
        result["status"] = "blocked"
        return result

    ckpt = Path(args.checkpoint) if args.checkpoint else Path(tempfile.mkdtemp(prefix="lz_ckpt_"))
    if not (ckpt / "config.json").exists():
        t0 = time.perf_counter()
        result["config"] = build_checkpoint(ckpt, args.shape, args.layers, dtype, "cpu" if args.cpu else "cuda:0")
        result["checkpoint_build_s"] = time.perf_counter() - t0
    import transformers

    cfg = transformers.AutoConfig.from_pretrained(ckpt)
    result.setdefault("config", {k: getattr(cfg, k) for k in SHAPES["tiny"] if hasattr(cfg, k)})
    for name in wanted:
        print(f"[multi_gpu] {name} ...", flush=True)
        try:
            entry = (run_device_map(args, ckpt, dtype, cfg.vocab_size, cfg.num_hidden_layers) if name == "device_map"
                     else run_tp(args, ckpt))
        except Exception as exc:  # noqa: BLE001 - one setup failing is a result; the other still runs
            entry = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-4000:]}
        result["setups"][name] = entry
        print(f"[multi_gpu] {name}: {json.dumps(_headline(entry))}", flush=True)
    failed = [n for n, e in result["setups"].items()
              if "error" in e or not e.get("parity_patched_vs_unpatched", {}).get("passed", False)
              or not e.get("fp32_check", {"passed": True}).get("passed", False)]
    result["status"] = "failed" if failed else "passed"
    result["failed"] = failed
    return result


def _headline(entry: dict[str, Any]) -> dict[str, Any]:
    if "error" in entry:
        return {"error": entry["error"]}
    p = entry.get("parity_patched_vs_unpatched", {})
    return {"parity": p.get("passed"), "max_abs_diff": p.get("max_abs_diff"), "speedup": entry.get("speedup"),
            "patched": entry.get("patch", {}).get("patched")}


# ---------------------------------------------------------------------------------------------- markdown
def _fmt(v: Any, spec: str = ",.0f") -> str:
    return "n/a" if v is None else format(v, spec)


def markdown(result: dict[str, Any]) -> str:
    v = result["versions"]
    lines = [f"# Multi-GPU: patched vs unpatched ({result['date']})", "",
             f"Mode {result['mode']}; device: {result['device']}; dtype {result['dtype']}; shape {result['shape']}; "
             f"torch {v['torch']}, transformers {v['transformers']}, accelerate {v['accelerate']}; commit {v['git']}.",
             "", f"Status: **{result['status']}**", ""]
    if result.get("not_run"):
        lines += ["Not run:", ""] + [f"- {item}" for item in result["not_run"]] + [""]
    if result.get("config"):
        lines += [f"Config: `{json.dumps(result['config'])}`", ""]
    setups = result["setups"]
    if not setups:
        return "\n".join(lines) + "\n"
    lines += ["## Parity (patched vs unpatched, same weights and placement)", "",
              "| setup | max abs diff | mean abs diff | top-1 agreement | noise floor (eager vs sdpa) | greedy tokens equal "
              "| verdict |", "|---|---|---|---|---|---|---|"]
    for name, e in setups.items():
        if "error" in e:
            lines.append(f"| {name} | error: {e['error'][:200]} | | | | | failed |")
            continue
        p, f = e["parity_patched_vs_unpatched"], e["noise_floor_eager_vs_sdpa"]
        lines.append(f"| {name} | {p['max_abs_diff']:.3g} | {p['mean_abs_diff']:.3g} | {p['top1_agreement']:.4f} | "
                     f"{f['max_abs_diff']:.3g} | {p['greedy_equal']}/{p['greedy_tokens']} | "
                     f"{'pass' if p['passed'] else 'FAIL'} ({p['criterion']}) |")
    checked = {n: e["fp32_check"] for n, e in setups.items() if "fp32_check" in e}
    if checked:
        lines += ["", "## Deterministic check (weights upcast to fp32, TF32 off)", "",
                  "| setup | max abs diff | bound | top-1 agreement | greedy tokens equal | verdict |",
                  "|---|---|---|---|---|---|"]
        for name, c in checked.items():
            lines.append(f"| {name} | {c['max_abs_diff']:.3g} | {c['bound']:.3g} | {c['top1_agreement']:.4f} | "
                         f"{c['greedy_equal']}/{c['greedy_tokens']} | {'pass' if c['passed'] else 'FAIL'} |")
    ok = {n: e for n, e in setups.items() if "error" not in e}
    if ok:
        shapes = list(next(iter(ok.values()))["unpatched"]["prefill_tokens_per_s"])
        n_rounds = len(next(iter(ok.values())).get("rounds", [])) or 1
        lines += ["", f"Timing: unpatched and patched alternate over {n_rounds} rounds on the same model; a speed-up "
                  "is the median of the per-round ratios, the numbers beside it the medians over rounds.",
                  "", "## Prefill tokens/s: unpatched -> patched (speedup)", "",
                  "| setup | " + " | ".join(shapes) + " |", "|---|" + "---|" * len(shapes)]
        for name, e in ok.items():
            cells = []
            for s in shapes:
                a, b = e["unpatched"]["prefill_tokens_per_s"].get(s), e["patched"]["prefill_tokens_per_s"].get(s)
                sp = e["speedup"]["prefill"].get(s)
                cells.append(f"{_fmt(a)} -> {_fmt(b)} ({_fmt(sp, '.2f')}x)")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines += ["", "## Decode ms/step (dynamic cache): unpatched -> patched (speedup)", "",
                  "| setup | unpatched | patched | speedup |", "|---|---|---|---|"]
        for name, e in ok.items():
            lines.append(f"| {name} | {_fmt(e['unpatched']['decode_ms_per_step'], '.2f')} | "
                         f"{_fmt(e['patched']['decode_ms_per_step'], '.2f')} | {_fmt(e['speedup']['decode'], '.2f')}x |")
        lines += ["", "## What was patched, where it ran", ""]
        for name, e in ok.items():
            pt = e["patch"]
            lines.append(f"- **{name}**: patched {json.dumps(pt['patched'])}, attention "
                         f"`{pt['attn_implementation']}`; kernels {json.dumps(pt['kernels'])}; "
                         f"circuit keys {', '.join(pt['circuit_keys']) or '(none)'}; failures {pt['failures']}, "
                         f"fallbacks {pt['fallbacks']}.")
            for why, s in pt["skipped"].items():
                lines.append(f"  - skipped {s['count']} ({', '.join(s['examples'])}, ...): {why}")
            if name == "device_map":
                lines.append(f"  - placement: {json.dumps(e['placement'])}")
            if name == "tp":
                lines.append(f"  - sharding: {json.dumps(e.get('sharding'))}; backend {e.get('backend')}; ranks: "
                             + "; ".join(f"rank {r.get('rank')} on {r.get('device')}: max abs diff "
                                         f"{_fmt((r.get('parity') or {}).get('max_abs_diff'), '.3g')}"
                                         for r in e.get("ranks", [])))
    for name, e in ok.items() if ok else ():
        for variant in ("unpatched", "patched"):
            rows = e.get(f"profile_{variant}")
            if rows:
                lines += ["", f"## Decode profile, {name}, {variant} (top ops by self CPU time)", "",
                          "| op | calls | self CPU us | device us |", "|---|---|---|---|"]
                lines += [f"| {r['name']} | {r['calls']} | {r['self_cpu_us']:.0f} | {r['device_us']:.0f} |"
                          for r in rows]
    errors = [(n, e) for n, e in setups.items() if "error" in e]
    if errors:
        lines += ["", "## Errors", ""]
        for n, e in errors:
            lines += [f"### {n}", "", "```", e["error"], (e.get("traceback") or e.get("stderr_tail") or "")[-2000:],
                      "```"]
            for rank, tail in (e.get("rank_stderr_tails") or {}).items():
                lines += ["", f"{rank} stderr:", "", "```", tail or "(empty)", "```"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu", action="store_true", help="CI smoke test: tiny fp32 model, cpu+disk map, gloo TP")
    ap.add_argument("--mode", choices=["all", "device_map", "tp"], default="all",
                    help="'tp' is the per-rank entry point that this script launches under torch.distributed.run")
    ap.add_argument("--shape", choices=sorted(SHAPES), default=None, help="model shape (default 8b on GPU, tiny on CPU)")
    ap.add_argument("--layers", type=int, default=None, help="override the number of decoder layers")
    ap.add_argument("--checkpoint", type=Path, default=None, help="reuse / create the random checkpoint here")
    ap.add_argument("--nproc", type=int, default=2, help="tensor-parallel processes")
    ap.add_argument("--tp-timeout", type=int, default=None, help="seconds for the whole tensor-parallel run")
    ap.add_argument("--prefill", default=None, help="prefill shapes BATCHxSEQ,...")
    ap.add_argument("--parity-len", type=int, default=None)
    ap.add_argument("--prompt", type=int, default=None, help="decode prompt length")
    ap.add_argument("--steps", type=int, default=None, help="decode steps per measurement")
    ap.add_argument("--greedy", type=int, default=None, help="greedy tokens compared for parity")
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=None, help="alternating unpatched/patched timing rounds")
    ap.add_argument("--fp32-check", action=argparse.BooleanOptionalAction, default=True,
                    help="also compare patched vs unpatched with the weights upcast to fp32 (GPU runs)")
    ap.add_argument("--profile", action="store_true", help="profile a short decode, unpatched and patched")
    ap.add_argument("--part", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path, help="write the results as JSON here")
    ap.add_argument("--md", type=Path, help="write the markdown table here")
    args = ap.parse_args(argv)
    defaults = CPU_DEFAULTS if args.cpu else GPU_DEFAULTS
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.shape is None:
        args.shape = "tiny" if args.cpu else "8b"
    if args.tp_timeout is None:
        args.tp_timeout = 150 if args.cpu else 360
    args.prefill_shapes = _parse_shapes(args.prefill)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for key, value in NO_MULTICAST_ENV.items():
        os.environ.setdefault(key, value)
    if args.mode == "tp" and "RANK" in os.environ:
        if not args.part or not args.checkpoint:
            raise SystemExit("--mode tp runs under torch.distributed.run with --checkpoint and --part; "
                             "run the script without --mode to launch it")
        rc = tp_rank_main(args)
        # Leave without running C++ static destructors: on CPU/gloo a rank that had already reported and
        # destroyed its process group still died at interpreter exit now and then with "terminate called
        # without an active exception" (a joinable std::thread in a static object), which torchrun turns
        # into a failed run. Everything this rank owes is written and flushed before this point.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    result = run(args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str))
    md = markdown(result)
    if args.md:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text(md)
    print(md)
    return {"passed": 0, "failed": 1, "blocked": 2}[result["status"]]


if __name__ == "__main__":
    sys.exit(main())
