"""End-to-end: a LayerZero-patched model vs HF sdpa, HF eager and a Liger-patched model, per architecture.

Architectures (``--arch``, random weights at the real shapes, no download): ``llama-1b`` (Llama-3.2-1B),
``qwen3-1.7b`` (Qwen3-1.7B: per-head q/k norms), ``gemma2-2b`` (Gemma2-2B: attention logit softcap 50 and
sliding windows, which Transformers' sdpa path drops and its eager path applies). bf16, one process, same
weights in every variant. Measures:

* prefill tokens/s at (batch x seq) 1x4096, 8x1024, 32x512 (``use_cache=False``, ``logits_to_keep=1`` so the
  128k-vocab head does not dominate);
* decode ms/step (a batch of ``--decode-batch`` prompts of ``--prompt`` tokens) with a dynamic cache and with
  a static cache (``generate``; on CUDA Transformers auto-compiles the static-cache decode step, which is the
  path where our ops must be compile-safe), and how many times torch.compile recompiled or hit its limit;
* logits of every variant vs HF eager in fp32 on the same weights (max abs diff, top-1 agreement) on a
  1x512 input;
* with ``--compile-shapes``, ``torch.compile(model)`` prefill of HF sdpa and of the patched model, the latter
  with both compile strategies (:mod:`layerzero.ops.compile_strategy`; the static-cache decode too);
* which kernels LayerZero chose (the patched model's telemetry);
* prefill in rounds alternating the patched model with a peer on two live models (``--sdpa-rounds``: HF sdpa on
  a second copy of the weights; ``--liger-rounds``: the Liger-patched model): a noisy minute lands on both, so
  these medians are the prefill ratios to quote (``--prefill-only`` keeps just prefill, logits and the rounds).

Liger is applied LAST and on its own model instance: Liger's ``apply_liger_kernel_to_*`` functions rewrite
the modeling module's globals and classes for the whole process, so any HF baseline measured after it would
silently run Liger kernels. LayerZero's patch is per instance and unaffected.

    python benchmarks/e2e.py --arch gemma2-2b --json out.json --md out.md   # GPU run (bf16)
    python benchmarks/e2e.py --quick --json q.json                          # CPU smoke test (tiny config)
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import logging
import platform
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from layerzero.ops.compile_strategy import DEFAULT_STRATEGY, STRATEGIES  # noqa: E402
from result_files import git_commit  # noqa: E402

LLAMA_1B = dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                intermediate_size=8192, vocab_size=128256, head_dim=64, max_position_embeddings=8192,
                rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
                tie_word_embeddings=True)
QWEN3_1_7B = dict(hidden_size=2048, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
                  intermediate_size=6144, vocab_size=151936, head_dim=128, max_position_embeddings=8192,
                  rms_norm_eps=1e-6, tie_word_embeddings=True)
GEMMA2_2B = dict(hidden_size=2304, num_hidden_layers=26, num_attention_heads=8, num_key_value_heads=4,
                 intermediate_size=9216, vocab_size=256000, head_dim=256, max_position_embeddings=8192,
                 rms_norm_eps=1e-6, attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
                 sliding_window=4096, query_pre_attn_scalar=256, hidden_activation="gelu_pytorch_tanh")
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
            vocab_size=128, head_dim=16, max_position_embeddings=512, rms_norm_eps=1e-5, tie_word_embeddings=False)
# --arch -> (config class, config); --quick swaps in the tiny sizes with the architecture's own features.
ARCHS: dict[str, tuple[str, dict]] = {
    "llama-1b": ("LlamaConfig", LLAMA_1B),
    "qwen3-1.7b": ("Qwen3Config", QWEN3_1_7B),
    "gemma2-2b": ("Gemma2Config", GEMMA2_2B),
}

GPU_PREFILL = [(1, 4096), (8, 1024), (32, 512)]
CPU_PREFILL = [(1, 64), (4, 32)]


# ---------------------------------------------------------------------------------------------- timing
def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_fn(fn: Callable[[], Any], device: str, warmup: int, repeats: int,
            sync: Callable[[], None] | None = None) -> float:
    """Median wall seconds of ``fn`` after ``warmup`` calls, each timed call ended by ``sync`` (default: the
    current CUDA device when ``device`` is CUDA; a model split over GPUs passes one that waits for all)."""
    sync = sync or (lambda: _sync(device))
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# ---------------------------------------------------------------------------------------------- models
def build_model(cfg: dict, dtype: torch.dtype, device: str, attn: str, state: dict | None = None,
                config_class: str = "LlamaConfig"):
    import transformers

    config = getattr(transformers, config_class)(**cfg, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    with torch.device(device):
        torch.manual_seed(0)
        model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation=attn, dtype=dtype)
    if state is not None:
        model.load_state_dict(state)
    return model.eval()


def bench_setup(arch: str, quick: bool) -> tuple[str, torch.dtype, str, dict]:
    """(device, dtype, config class, config) of a benchmark run: bf16 on CUDA; a ``--quick`` smoke test
    (or no GPU) runs fp32 on the CPU with the architecture's features at the tiny sizes."""
    device = "cpu" if quick or not torch.cuda.is_available() else "cuda"
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    config_class, cfg = ARCHS[arch]
    return device, dtype, config_class, ({**cfg, **TINY} if quick else cfg)


def liger_model(cfg: dict, dtype: torch.dtype, device: str, state: dict, config_class: str):
    """A fresh model with ``state`` and Liger's kernels applied (raises ImportError without liger-kernel).
    Build it last: Liger rewrites the modeling module's globals for the whole process."""
    from liger_kernel.transformers import _apply_liger_kernel_to_instance

    model = build_model(cfg, dtype, device, "sdpa", state, config_class=config_class)
    _apply_liger_kernel_to_instance(model=model, cross_entropy=False, fused_linear_cross_entropy=False)
    return model


def token_ids(vocab: int, shape: tuple[int, ...], device: str, seed: int = 0) -> torch.Tensor:
    """Random token ids drawn on the CPU and moved: the timing does not depend on the CUDA generator, which
    a variant can leave unusable (see :func:`cuda_generator_problem`)."""
    return torch.randint(3, vocab, shape, generator=torch.Generator().manual_seed(seed)).to(device)


def cuda_generator_problem() -> str | None:
    """None when the default CUDA generator still works, else its error. A CUDA-graph capture that raises
    part-way can leave the generator in capture state; every later CUDA ``randint`` (sampling in
    ``generate`` included) then fails with "Offset increment outside graph capture"."""
    if not torch.cuda.is_available():
        return None
    try:
        torch.randint(0, 2, (1,), device="cuda")
        return None
    except RuntimeError as exc:
        return str(exc).splitlines()[0]


def prefill_tps(model, device: str, batch: int, seq: int, vocab: int, warmup: int, repeats: int,
                use_cache: bool = False) -> float:
    """Prefill tokens/s; ``use_cache=True`` fills a fresh cache (the first forward of ``generate``)."""
    ids = token_ids(vocab, (batch, seq), device)

    def run():
        with torch.no_grad():
            model(ids, use_cache=use_cache, logits_to_keep=1)

    return batch * seq / time_fn(run, device, warmup, repeats)


class StepClock:
    """A logits processor that timestamps every decode step (after a device sync), so ms/step excludes the
    prefill without subtracting two noisy measurements. ``sync`` as in :func:`time_fn`."""

    def __init__(self, device: str, sync: Callable[[], None] | None = None):
        self.sync = sync or (lambda: _sync(device))
        self.stamps: list[float] = []

    def __call__(self, input_ids, scores):
        self.sync()
        self.stamps.append(time.perf_counter())
        return scores


# Inductor says why it runs a compiled graph without CUDA graphs ("skipping cudagraphs due to ...") on this
# logger, an artifact that is off unless TORCH_LOGS names it: RecompileCounter switches it on while attached.
CUDAGRAPH_LOG = "torch._inductor.cudagraph_utils.__cudagraphs"


class RecompileCounter(logging.Handler):
    """While attached: torch.compile's recompile-limit messages, and Inductor's reasons for running a
    graph without CUDA graphs (a static-cache decode that loses its CUDA graphs is host-bound again)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.limit_hits = 0
        self.messages: list[str] = []
        self.cudagraph_skips: list[str] = []
        self._attached: list[tuple[logging.Logger, int, bool]] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if "recompile_limit" in msg or "cache_size_limit" in msg:
            self.limit_hits += 1
            self.messages.append(msg.splitlines()[0][:300])
        elif "skipping cudagraphs" in msg:
            self.cudagraph_skips.append(msg.splitlines()[0][:300])

    def skip_reasons(self) -> list[str]:
        """The distinct reasons Inductor gave for skipping CUDA graphs (at most five)."""
        return sorted(set(self.cudagraph_skips))[:5]

    def __enter__(self) -> "RecompileCounter":
        for name in ("torch._dynamo", CUDAGRAPH_LOG):
            log = logging.getLogger(name)
            self._attached.append((log, log.level, log.disabled))
            log.addHandler(self)
            if name == CUDAGRAPH_LOG:
                log.setLevel(logging.DEBUG)
                log.disabled = False
        return self

    def __exit__(self, *exc: object) -> None:
        for log, level, disabled in self._attached:
            log.removeHandler(self)
            log.setLevel(level)
            log.disabled = disabled
        self._attached.clear()


def decode_ms(model, device: str, vocab: int, prompt: int, steps: int, cache: str | None, repeats: int,
              batch: int = 1) -> float:
    """Median ms per decode step of greedy ``generate`` (steps 2..N; step 1 follows the prefill)."""
    from transformers import LogitsProcessorList

    ids = token_ids(vocab, (batch, prompt), device, seed=1)
    per_step: list[float] = []
    for i in range(repeats + 1):  # the first run warms up (and compiles, for the static cache on CUDA)
        clock = StepClock(device)
        model.generate(ids, max_new_tokens=steps, min_new_tokens=steps, do_sample=False, pad_token_id=0,
                       eos_token_id=None, cache_implementation=cache, logits_processor=LogitsProcessorList([clock]))
        if i:
            per_step += [b - a for a, b in zip(clock.stamps[1:], clock.stamps[2:])]
    return statistics.median(per_step) * 1e3


def profile_decode(model, prompt: torch.Tensor, steps: int = 8, top: int = 25) -> dict[str, Any]:
    """torch.profiler over a short greedy decode (after one warm-up run): the ops with the most self CPU
    time — where a host-bound decode step goes — with their call counts and device time, and the total."""
    from torch.profiler import ProfilerActivity, profile

    device = prompt.device.type

    def run() -> None:
        model.generate(prompt, max_new_tokens=steps, min_new_tokens=steps, do_sample=False, pad_token_id=0,
                       eos_token_id=None)
        _sync(device)

    run()  # warm-up: selection, first-call checks, compiles
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as prof:
        run()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    return {"self_cpu_total_ms": sum(e.self_cpu_time_total for e in events) / 1e3,
            "top": [{"name": e.key[:80], "calls": e.count, "self_cpu_ms": e.self_cpu_time_total / 1e3,
                     "device_ms": (getattr(e, "self_device_time_total", 0.0) or 0.0) / 1e3} for e in events[:top]]}


def profile_markdown(title: str, prof: dict[str, Any], rows: int = 25) -> list[str]:
    """The lines of a markdown table of :func:`profile_decode`'s top ops under a heading."""
    return ["", f"## {title} (top ops by self CPU time; {prof['self_cpu_total_ms']:.1f} ms in all)", "",
            "| op | calls | self CPU ms | device ms |", "|---|---:|---:|---:|",
            *[f"| `{r['name']}` | {r['calls']} | {r['self_cpu_ms']:.2f} | {r.get('device_ms', 0.0):.2f} |"
              for r in prof["top"][:rows]]]


def _recompiles() -> int:
    """torch.compile frames compiled so far (a recompile per decode step shows up as growth here)."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:
        return 0
    return int(sum(counters["stats"].get(k, 0) for k in ("unique_graphs",)))


def parity(model, reference_logits: torch.Tensor, ids: torch.Tensor) -> dict[str, float]:
    with torch.no_grad():
        logits = model(ids, use_cache=False).logits.float()
    diff = (logits - reference_logits).abs().max().item()
    agree = (logits.argmax(-1) == reference_logits.argmax(-1)).float().mean().item()
    return {"max_abs_diff": diff, "top1_agreement": agree}


# ---------------------------------------------------------------------------------------------- run
def versions() -> dict[str, str | None]:
    import transformers

    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {"python": platform.python_version(), "torch": torch.__version__,
                                  "transformers": transformers.__version__, "git": None}
    # optional: Liger is a compared variant; with FlashInfer installed LayerZero may pick its kernels
    for key, dist in (("liger_kernel", "liger-kernel"), ("flashinfer", "flashinfer-python")):
        try:
            out[key] = version(dist)
        except PackageNotFoundError:
            out[key] = None
    try:
        import triton

        out["triton"] = triton.__version__
    except Exception:
        out["triton"] = None
    out["git"] = git_commit()
    return out


class Interrupted(Exception):
    """The run was stopped (SIGTERM, e.g. from ``timeout``) before it finished."""


def _stop(signum: int, _frame: Any) -> None:
    raise Interrupted(signal.Signals(signum).name)


def run(args: argparse.Namespace, result: dict[str, Any] | None = None) -> dict[str, Any]:
    """Measure every variant into ``result`` (a new dict if None) as each one finishes, so a caller that
    stops the run (see :func:`main`) still holds every variant measured before the stop."""
    import layerzero_hf  # registers the "layerzero" attention implementation

    quick = args.quick
    device, dtype, config_class, cfg = bench_setup(args.arch, quick)
    shapes = CPU_PREFILL if quick else GPU_PREFILL
    warmup, repeats = (1, 2) if quick else (args.warmup, args.repeats)
    prefill_repeats = 2 if quick else args.prefill_repeats
    prompt, steps = (8, 6) if quick else (args.prompt, args.steps)
    if quick:
        args.decode_batch = min(args.decode_batch, 2)
    vocab = cfg["vocab_size"]
    caches = [] if args.prefill_only else [None] if args.no_static else [None, "static"]

    base = build_model(cfg, dtype, device, "sdpa", config_class=config_class)
    state = {k: v for k, v in base.state_dict().items()}
    parity_ids = token_ids(vocab, (1, 64 if quick else 512), device, seed=7)
    result = {} if result is None else result
    result.update({
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "arch": args.arch,
        "decode": {"batch": args.decode_batch, "prompt": prompt, "new_tokens": steps},
        "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
        "dtype": str(dtype).removeprefix("torch."),
        "config": {k: v for k, v in cfg.items() if k != "rope_parameters"},
        "versions": versions(),
        "compile_strategy": DEFAULT_STRATEGY,
        "variants": {},
    })

    # The reference every variant's logits are judged against: HF eager in fp32 on the same weights. HF
    # sdpa's own bf16 error against it is the bar LayerZero's must not exceed.
    fp32 = build_model(cfg, torch.float32, device, "eager", {k: v.float() for k, v in state.items()},
                       config_class=config_class)
    with torch.no_grad():
        reference = fp32(parity_ids, use_cache=False).logits.float()
    del fp32
    gc.collect()

    def measure(name: str, model) -> dict[str, Any]:
        result["running"] = name
        entry: dict[str, Any] = {"prefill_tokens_per_s": {}, "decode_ms_per_step": {}}
        for b, s in shapes:
            try:
                entry["prefill_tokens_per_s"][f"{b}x{s}"] = prefill_tps(model, device, b, s, vocab, warmup,
                                                                        prefill_repeats)
            except torch.OutOfMemoryError as exc:
                entry["prefill_tokens_per_s"][f"{b}x{s}"] = None
                entry.setdefault("errors", []).append(f"prefill {b}x{s}: out of memory: {exc}".splitlines()[0])
                gc.collect()
                torch.cuda.empty_cache()
        recompiles_before = _recompiles()
        with RecompileCounter() as counter:
            for cache in caches:
                key = cache or "dynamic"
                try:
                    entry["decode_ms_per_step"][key] = decode_ms(model, device, vocab, prompt, steps, cache, repeats,
                                                                 args.decode_batch)
                except Exception as exc:  # a variant that cannot decode with this cache is a result, not a crash
                    entry["decode_ms_per_step"][key] = None
                    entry.setdefault("errors", []).append(
                        f"decode {key}: {type(exc).__name__}: {exc}".splitlines()[0])
        entry["decode_recompiles"] = _recompiles() - recompiles_before
        entry["recompile_limit_hits"] = counter.limit_hits
        entry["recompile_limit_messages"] = counter.messages[:3]
        entry["cudagraph_skips"] = counter.skip_reasons()
        entry["parity_vs_fp32_eager"] = parity(model, reference, parity_ids)
        problem = cuda_generator_problem()
        if problem:  # recorded against the variant that left it so; later variants draw no CUDA random numbers
            entry.setdefault("errors", []).append(f"CUDA generator unusable after this variant: {problem}")
        print(f"[{name}] {json.dumps(entry)}", flush=True)
        torch._dynamo.reset()
        return entry

    def measure_compiled(name: str, model) -> dict[str, Any]:
        """Prefill of ``torch.compile(model)`` (default mode, static shapes) at the compile shapes."""
        result["running"] = name
        compiled = torch.compile(model)
        entry: dict[str, Any] = {"prefill_tokens_per_s": {}}
        for b, s in compile_shapes:
            entry["prefill_tokens_per_s"][f"{b}x{s}"] = prefill_tps(compiled, device, b, s, vocab, warmup + 1,
                                                                   prefill_repeats)
        if args.compile_with_cache:  # into a fresh cache: Transformers then has no packed-sequence mask to build
            entry["prefill_with_cache_tokens_per_s"] = {
                f"{b}x{s}": prefill_tps(compiled, device, b, s, vocab, warmup + 1, prefill_repeats, use_cache=True)
                for b, s in compile_shapes}
        entry["parity_vs_fp32_eager"] = parity(compiled, reference, parity_ids)
        print(f"[{name}] {json.dumps(entry)}", flush=True)
        torch._dynamo.reset()
        return entry

    compile_shapes = [tuple(int(x) for x in s.split("x")) for s in args.compile_shapes.split(",") if s]
    if args.prefill_only:
        compile_shapes = []
    if quick:
        compile_shapes = compile_shapes and [shapes[0]]
    variants = result["variants"]
    compiled_variants: dict[str, Any] = {}
    result["compiled"] = compiled_variants
    base.set_attn_implementation("sdpa")
    variants["hf_sdpa"] = measure("hf_sdpa", base)
    if compile_shapes:
        compiled_variants["hf_sdpa"] = measure_compiled("hf_sdpa compiled", base)
    base.set_attn_implementation("eager")
    if not args.skip_eager:
        variants["hf_eager"] = measure("hf_eager", base)
    report = layerzero_hf.patch(base, attention=True)
    variants["layerzero"] = measure("layerzero", base)
    if compile_shapes:
        compiled_variants["layerzero"] = measure_compiled("layerzero compiled", base)
    if args.other_compile_strategy and not args.prefill_only:  # the same patch with the other compile strategy for norms, RoPE and MLP
        other = measure_other_strategy(base, compile_shapes, "static" in caches, measure_compiled,
                                       lambda: decode_ms(base, device, vocab, prompt, steps, "static", repeats,
                                                         args.decode_batch))
        result["other_compile_strategy"] = other
        if "compiled" in other:
            compiled_variants[f"layerzero_{other['strategy']}"] = other.pop("compiled")
    snap = layerzero_hf.model_telemetry(base)["snapshot"]
    variants["layerzero"]["kernels"] = {k: v.calls for k, v in snap.per_kernel.items() if v.calls}
    variants["layerzero"]["patched"] = report.counts()
    layerzero_hf.unpatch(base)
    # the defaults without the fused residual norm: what the default patch gains from it, measured beside it
    unfused_kinds = [k for k in layerzero_hf.default_patch_kinds() if k != "residual_norm"]
    if args.without_residual_norm:
        unfused = layerzero_hf.patch(base, attention=True, only=unfused_kinds)
        variants["layerzero_no_residual_norm"] = measure("layerzero without residual_norm", base)
        variants["layerzero_no_residual_norm"]["patched"] = unfused.counts()
        layerzero_hf.unpatch(base)
    expected_patched = {"layerzero": variants["layerzero"]["patched"],
                        "layerzero_no_residual_norm": variants.get("layerzero_no_residual_norm", {}).get("patched")}
    if args.sdpa_rounds:  # the default patch against HF sdpa on a second copy of the weights, before Liger
        result["running"] = "layerzero vs hf_sdpa, alternating"
        peer = build_model(cfg, dtype, device, "sdpa", state, config_class=config_class)
        result["vs_hf_sdpa_alternating"] = prefill_alternating(
            base, peer, "hf_sdpa", {"layerzero": None}, shapes, device, vocab, warmup,
            2 if quick else args.sdpa_rounds, expected_patched)
        del peer
        gc.collect()
    if not args.liger_rounds:
        del base
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()

    try:
        liger = liger_model(cfg, dtype, device, state, config_class)
    except ImportError as exc:
        result["liger"] = f"not measured: {exc}"
    else:
        variants["liger"] = measure("liger", liger)
        result["liger"] = "measured (applied last: it rewrites the modeling module's globals for the process)"
        if args.liger_rounds:
            lz_variants = {"layerzero": None}
            if args.without_residual_norm:
                lz_variants["layerzero_no_residual_norm"] = unfused_kinds
            result["running"] = "layerzero vs liger, alternating"
            result["vs_liger_alternating"] = prefill_alternating(
                base, liger, "liger", lz_variants, shapes, device, vocab, warmup, 2 if quick else args.liger_rounds,
                expected_patched)

    result.pop("running", None)
    return add_ratios(result)


def add_ratios(result: dict[str, Any]) -> dict[str, Any]:
    """Each variant's speed-ups against HF sdpa (eager and compiled) and compiled against LayerZero eager,
    for the variants ``result`` holds (all of them, or those measured before an interrupted run stopped)."""
    variants, compiled_variants = result.get("variants", {}), result.get("compiled", {})
    sdpa = variants.get("hf_sdpa")
    for name, entry in variants.items() if sdpa else ():
        entry["prefill_speedup_vs_sdpa"] = {
            k: (v / sdpa["prefill_tokens_per_s"][k]) if v and sdpa["prefill_tokens_per_s"].get(k) else None
            for k, v in entry["prefill_tokens_per_s"].items()}
        entry["decode_speedup_vs_sdpa"] = {
            k: (sdpa["decode_ms_per_step"][k] / v) if v and sdpa["decode_ms_per_step"].get(k) else None
            for k, v in entry["decode_ms_per_step"].items()}
    eager_lz = variants.get("layerzero", {}).get("prefill_tokens_per_s", {})
    for name, entry in compiled_variants.items() if "hf_sdpa" in compiled_variants else ():
        entry["prefill_speedup_vs_compiled_sdpa"] = {
            k: v / compiled_variants["hf_sdpa"]["prefill_tokens_per_s"][k]
            for k, v in entry["prefill_tokens_per_s"].items()}
        entry["prefill_speedup_vs_eager_layerzero"] = {
            k: v / eager_lz[k] for k, v in entry["prefill_tokens_per_s"].items() if eager_lz.get(k)}
    return result


def measure_other_strategy(model, compile_shapes, static: bool, measure_compiled, static_decode) -> dict[str, Any]:
    """With the compile strategy that is not the default (:func:`layerzero.ops.set_compile_strategy`):
    compiled prefill and the static-cache decode (which Transformers compiles) of the patched ``model``,
    whose eager path is the same either way. The default comes back afterwards."""
    from layerzero import ops

    strategy = next(s for s in STRATEGIES if s != DEFAULT_STRATEGY)
    out: dict[str, Any] = {"strategy": strategy}
    torch._dynamo.reset()
    try:
        with ops.compile_strategy_set_to(strategy):
            if compile_shapes:
                out["compiled"] = measure_compiled(f"layerzero compiled, {strategy} norms/RoPE/MLP", model)
            if static:
                with RecompileCounter() as counter:
                    try:
                        out["static_decode_ms"] = static_decode()
                    except Exception as exc:  # noqa: BLE001 - a result, not a crash
                        out["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
                out["cudagraph_skips"] = counter.skip_reasons()
    finally:
        torch._dynamo.reset()
    print(f"[layerzero {strategy}] {json.dumps({k: v for k, v in out.items() if k != 'compiled'})}", flush=True)
    return out


def prefill_alternating(base, peer, peer_name: str, lz_variants: dict[str, list[str] | None], shapes, device: str,
                        vocab: int, warmup: int, rounds: int, expected_patched: dict[str, Any]) -> dict[str, Any]:
    """LayerZero vs a peer model's prefill (Liger, or HF sdpa on a second copy of the weights), alternating
    within each round on two live models: the per-variant tables measure one variant after another, so a noisy
    minute lands on one of them; here both see it. ``base`` is patched again for each LayerZero variant; its
    patch must cover what it covered in the per-variant run (``patched`` is compared: after Liger rewrote the
    modeling module's globals, a short patch would time Liger's RoPE inside "LayerZero", and the result says
    so). Per shape: the median of per-round ratios and the medians of the tokens/s."""
    import layerzero_hf

    out: dict[str, Any] = {"rounds": rounds}
    for name, kinds in lz_variants.items():
        report = layerzero_hf.patch(base, attention=True, only=kinds)  # only=None: the default kinds
        patched = report.counts()
        entry: dict[str, Any] = {"patched": patched, "same_patch_as_before": patched == expected_patched.get(name),
                                 "shapes": {}}
        for b, s in shapes:
            ratios, lz_tps, peer_tps = [], [], []
            for _ in range(rounds):
                lz = prefill_tps(base, device, b, s, vocab, warmup, 3)
                other = prefill_tps(peer, device, b, s, vocab, warmup, 3)
                ratios.append(lz / other)
                lz_tps.append(lz)
                peer_tps.append(other)
            entry["shapes"][f"{b}x{s}"] = {
                f"speedup_vs_{peer_name}": statistics.median(ratios), "round_ratios": ratios,
                "layerzero_tokens_per_s": statistics.median(lz_tps),
                f"{peer_name}_tokens_per_s": statistics.median(peer_tps)}
        layerzero_hf.unpatch(base)
        out[name] = entry
        print(f"[{name} vs {peer_name}, alternating] {json.dumps(entry)}", flush=True)
    return out


def markdown(result: dict[str, Any]) -> str:
    v = result["versions"]
    lines = [
        f"# End-to-end, {result['arch']} ({result['date']})", "",
        f"Device: {result['device']}; dtype {result['dtype']}; torch {v['torch']}, transformers {v['transformers']}, "
        f"liger-kernel {v['liger_kernel'] or 'not installed'}; commit {v['git']}.", "",
        f"Config: {json.dumps(result['config'])}", "",
        f"Decode: {json.dumps(result['decode'])}", "",
        f"Liger: {result.get('liger')}", "",
    ]
    if result.get("partial"):
        lines += [f"**Partial run**: {result['partial']}", ""]
    variants = result["variants"]
    if "hf_sdpa" not in variants:
        return "\n".join(lines + ["No variant finished."]) + "\n"
    lines += ["## Prefill tokens/s (speedup vs HF sdpa)", ""]
    shapes = list(next(iter(variants.values()))["prefill_tokens_per_s"])
    lines.append("| variant | " + " | ".join(shapes) + " |")
    lines.append("|---|" + "---|" * len(shapes))
    for name, e in variants.items():
        cells = [f"{e['prefill_tokens_per_s'][s]:,.0f} ({e['prefill_speedup_vs_sdpa'][s]:.2f}x)"
                 if e["prefill_tokens_per_s"][s] else "n/a" for s in shapes]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    caches = list(next(iter(variants.values()))["decode_ms_per_step"])
    if caches:  # none with --prefill-only
        lines += ["", "## Decode ms/step (speedup vs HF sdpa)", "",
                  "One pass per variant, minutes apart: a host-bound decode step drifts between them (the same code "
                  "read 0.70x and 1.23x in two runs); `benchmarks/decode_ab.py` alternates the variants in rounds "
                  "and is the decode number to quote.", "", "| variant | " + " | ".join(caches) + " |",
                  "|---|" + "---|" * len(caches)]
        for name, e in variants.items():
            cells = [f"{e['decode_ms_per_step'][c]:.2f} ({e['decode_speedup_vs_sdpa'][c]:.2f}x)"
                     if e["decode_ms_per_step"][c] else "n/a" for c in caches]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    compiled = result.get("compiled") or {}
    if "hf_sdpa" in compiled:
        cshapes = list(compiled["hf_sdpa"]["prefill_tokens_per_s"])
        lines += ["", "## torch.compile(model) prefill tokens/s (speedup vs compiled HF sdpa; vs LayerZero eager)", "",
                  "| variant | " + " | ".join(cshapes) + " |", "|---|" + "---|" * len(cshapes)]
        for name, e in compiled.items():
            cells = [f"{e['prefill_tokens_per_s'][s]:,.0f} ({e['prefill_speedup_vs_compiled_sdpa'][s]:.2f}x; "
                     f"{e['prefill_speedup_vs_eager_layerzero'].get(s, float('nan')):.2f}x)" for s in cshapes]
            lines.append(f"| {name} compiled | " + " | ".join(cells) + " |")
        if all("prefill_with_cache_tokens_per_s" in e for e in compiled.values()):
            base = compiled["hf_sdpa"]["prefill_with_cache_tokens_per_s"]
            lines += ["", "Compiled prefill into a fresh cache (`use_cache=True`; tokens/s, speedup vs compiled HF sdpa):",
                      "", "| variant | " + " | ".join(cshapes) + " |", "|---|" + "---|" * len(cshapes)]
            for name, e in compiled.items():
                cells = [f"{e['prefill_with_cache_tokens_per_s'][s]:,.0f} "
                         f"({e['prefill_with_cache_tokens_per_s'][s] / base[s]:.2f}x)" for s in cshapes]
                lines.append(f"| {name} compiled | " + " | ".join(cells) + " |")
    lines += ["", "## Logits vs HF eager in fp32 (same weights, 1x512) and torch.compile recompiles during decode", "",
              "| variant | max abs diff | top-1 agreement | decode recompiles | recompile-limit hits | "
              "CUDA graphs skipped because |", "|---|---|---|---|---|---|"]
    for name, e in variants.items():
        p = e["parity_vs_fp32_eager"]
        lines.append(f"| {name} | {p['max_abs_diff']:.4g} | {p['top1_agreement']:.4f} | "
                     f"{e.get('decode_recompiles', 'n/a')} | {e.get('recompile_limit_hits', 'n/a')} | "
                     f"{'; '.join(e.get('cudagraph_skips', [])) or '-'} |")
    lz = variants.get("layerzero", {})
    if lz.get("kernels"):
        lines += ["", "## Kernels LayerZero ran (calls)", "", ", ".join(f"{k}: {n}" for k, n in
                                                                       sorted(lz["kernels"].items()))]
    other = result.get("other_compile_strategy") or {}
    default = result.get("compile_strategy", "opaque")
    if other.get("static_decode_ms"):
        sdpa_static = variants["hf_sdpa"]["decode_ms_per_step"].get("static")
        ratio = f" ({sdpa_static / other['static_decode_ms']:.2f}x HF sdpa)" if sdpa_static else ""
        lines += ["", f"The variants above compile with strategy \"{default}\" (the default). Static-cache decode with "
                  f"`set_compile_strategy(\"{other['strategy']}\")`: {other['static_decode_ms']:.2f} ms/step{ratio}; "
                  f"CUDA graphs skipped because: {'; '.join(other.get('cudagraph_skips', [])) or '-'}"]
    elif other.get("error"):
        lines += ["", f"Static-cache decode with `set_compile_strategy(\"{other['strategy']}\")` failed: {other['error']}"]
    for peer, title in (("hf_sdpa", "HF sdpa (a second copy of the weights)"), ("liger", "Liger")):
        alt = result.get(f"vs_{peer}_alternating")
        if not alt:
            continue
        names = [n for n in alt if n != "rounds"]
        ashapes = list(alt[names[0]]["shapes"]) if names else []
        lines += ["", f"## Prefill vs {title}, alternating on two live models ({alt['rounds']} rounds; median of "
                  "per-round ratios, the range beside it)", "",
                  "| variant | " + " | ".join(ashapes) + " | same patch as in its own run |",
                  "|---|" + "---|" * (len(ashapes) + 1)]
        for n in names:
            cells = []
            for sh in ashapes:
                e = alt[n]["shapes"][sh]
                cells.append(f"{e[f'speedup_vs_{peer}']:.2f}x ({min(e['round_ratios']):.2f}-{max(e['round_ratios']):.2f})")
            same = "yes" if alt[n]["same_patch_as_before"] else "NO: " + json.dumps(alt[n]["patched"])
            lines.append(f"| {n} | " + " | ".join(cells) + f" | {same} |")
    errors = [(n, e) for n, entry in variants.items() for e in entry.get("errors", [])]
    if errors:
        lines += ["", "## Errors", ""] + [f"- {n}: {e}" for n, e in errors]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="CPU smoke test on a tiny config")
    ap.add_argument("--arch", choices=sorted(ARCHS), default="llama-1b")
    ap.add_argument("--decode-batch", type=int, default=8, help="decode: prompts per batch")
    ap.add_argument("--json", type=Path, help="write the results as JSON here")
    ap.add_argument("--md", type=Path, help="write a markdown summary here")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5, help="decode: timed generate calls per cache")
    ap.add_argument("--no-other-compile-strategy", dest="other_compile_strategy", action="store_false",
                    help="skip LayerZero with the compile strategy that is not the default (compiled prefill, "
                    "static-cache decode)")
    ap.add_argument("--liger-rounds", type=int, default=5, help="prefill rounds alternating LayerZero and Liger "
                    "on two live models after Liger is applied (0: skip; keeps a second model in memory)")
    ap.add_argument("--sdpa-rounds", type=int, default=5, help="prefill rounds alternating LayerZero and HF sdpa on "
                    "two live models (a second copy of the weights, before Liger is applied; 0: skip)")
    ap.add_argument("--prefill-only", action="store_true", help="prefill and logits only: no decode, no compiled "
                    "runs (the alternating rounds stay)")
    ap.add_argument("--prefill-repeats", type=int, default=9, help="prefill: timed forward passes per shape "
                    "(cheap; a median of 3 moved by up to 30%% on a busy host)")
    ap.add_argument("--prompt", type=int, default=512, help="decode: prompt length")
    ap.add_argument("--steps", type=int, default=32, help="decode: new tokens per measurement")
    ap.add_argument("--no-static", action="store_true", help="skip the static-cache decode (compile time)")
    ap.add_argument("--skip-eager", action="store_true", help="skip HF eager (slow at 1x4096)")
    ap.add_argument("--without-residual-norm", action="store_true", help="also measure LayerZero without the "
                    "residual_norm kind (the attention residual add inside the post-attention RMSNorm, on by default)")
    ap.add_argument("--compile-with-cache", action="store_true", help="also time the compiled prefill into a fresh "
                    "cache (use_cache=True): without a cache Transformers builds a packed-sequence mask under compile")
    ap.add_argument("--compile-shapes", default="", help="also measure torch.compile(model) prefill of HF sdpa and "
                    "LayerZero at these BATCHxSEQ shapes, e.g. 8x1024 (each compiles once per shape)")
    args = ap.parse_args(argv)
    # ``timeout`` (the GPU runner's per-benchmark limit) stops a run with SIGTERM: the variants measured by
    # then are still written, marked partial, instead of being lost with the process.
    result: dict[str, Any] = {}
    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        run(args, result)
    except Interrupted as exc:
        result["partial"] = (f"stopped by {exc} while measuring {result.pop('running', 'the setup')}; "
                             "the variants below finished before that")
        add_ratios(result)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if "versions" not in result:
        raise SystemExit("e2e: stopped before any measurement")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    md = markdown(result)
    if args.md:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text(md)
    print(md)
    return result


if __name__ == "__main__":
    main()
