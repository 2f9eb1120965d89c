"""Where a prefill's GPU time goes: HF sdpa vs the LayerZero-patched model vs the Liger-patched model.

For each shape, one prefill per variant under ``torch.profiler`` (after warm-up): the device time of every
GPU kernel, summed by kind (GEMM, attention, norm, RoPE, activation, elementwise, copy, reduction,
communication, other) and the top kernels by name, beside the wall time of the same call. A speed-up that
a wall-clock table reports without this breakdown says nothing about what to fix next; this says which
kind of work each variant still spends its time on.

    python benchmarks/prefill_profile.py --arch llama-8b --shapes 1x2048,8x512 --json p.json --md p.md
    python benchmarks/prefill_profile.py --quick                       # CPU smoke test (tiny config)

Liger is applied last on its own model (it rewrites the modeling module's globals for the process).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from e2e import ARCHS, TINY, build_model, liger_model, time_fn, versions  # noqa: E402
from result_files import write_result  # noqa: E402

LLAMA_8B_8L = dict(hidden_size=4096, num_hidden_layers=8, num_attention_heads=32, num_key_value_heads=8,
                   intermediate_size=14336, vocab_size=128256, head_dim=128, max_position_embeddings=8192,
                   rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
                   tie_word_embeddings=False)


def _arch_config(arch: str, quick: bool = False) -> tuple[str, dict]:
    """(config class, config) of a shipped architecture at the 4-layer width ``prefill_archs.py`` measures
    (the conformance tests' tiny size with ``quick``); token ids are e2e's ``build_model``'s to set."""
    from layerzero_hf.conformance.archs import TINY as CONFORMANCE_TINY, config_kwargs
    from prefill_archs import arch_size

    cls, kwargs = config_kwargs(arch, CONFORMANCE_TINY if quick else arch_size())
    return cls, {k: v for k, v in kwargs.items() if not k.endswith("_token_id")}


def _arch_shapes() -> dict[str, tuple[str, dict]]:
    """``<arch>-4l``: each shipped architecture as ``prefill_archs.py`` measures it, so a cell it reports
    can be profiled."""
    from layerzero_hf.conformance.archs import ARCHS as SHIPPED

    return {f"{arch}-4l": _arch_config(arch) for arch in SHIPPED}


PROFILE_ARCHS = {**ARCHS, "llama-8b": ("LlamaConfig", LLAMA_8B_8L), **_arch_shapes()}

# Kernel kinds by substrings of the kernel's name, first match wins (names differ by library and version:
# cuBLAS "nvjet"/"sm90_xmma", CUTLASS, flash "fmha"/"flash", cuDNN's generated SDPA kernels, Triton's
# own function names; Inductor's generated kernels, whatever they fuse, are "inductor").
KINDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("inductor", ("triton_poi_fused", "triton_red_fused", "triton_per_fused", "triton_tem_fused")),
    ("communication", ("nccl", "allreduce", "all_reduce", "allgather")),
    ("attention", ("flash", "fmha", "attention", "attn", "sdpa", "flex", "decode_partial", "decode_reduce")),
    ("gemm", ("gemm", "nvjet", "xmma", "cutlass", "cublas", "matmul", "wgmma", "aten::mm", "addmm", "bmm")),
    ("norm", ("rms", "norm")),
    ("rope", ("rope", "rotary")),
    ("activation", ("silu", "gelu", "swiglu", "geglu", "glu", "act_and_mul", "tanh")),
    ("copy", ("copy", "memcpy", "memset", "cat", "transpose", "contiguous", "fill")),
    ("reduction", ("reduce",)),
    ("elementwise", ("elementwise", "vectorized", "unrolled")),
)


def kernel_kind(name: str) -> str:
    low = name.lower()
    for kind, needles in KINDS:
        if any(n in low for n in needles):
            return kind
    return "other"


def profile_call(fn, device: str) -> dict[str, Any]:
    """Device time per GPU kernel of one ``fn()`` (CUDA), or self CPU time per op (CPU), in ms."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        fn()
        if cuda:
            torch.cuda.synchronize()
    kernels: dict[str, dict[str, float]] = {}
    for e in prof.key_averages():
        on_device = getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA
        # a custom op (``layerzero::...``) shows up on the device as the range of the kernels it launched
        if cuda != on_device or (cuda and e.key.startswith("layerzero::")):
            continue
        ms = ((e.self_device_time_total if cuda else e.self_cpu_time_total) or 0.0) / 1e3
        if ms <= 0:
            continue
        row = kernels.setdefault(e.key, {"ms": 0.0, "calls": 0})
        row["ms"] += ms
        row["calls"] += e.count
    by_kind: dict[str, float] = {}
    for name, row in kernels.items():
        kind = kernel_kind(name)
        by_kind[kind] = by_kind.get(kind, 0.0) + row["ms"]
    top = sorted(kernels.items(), key=lambda kv: -kv[1]["ms"])[:15]
    return {**(_timeline(prof) if cuda else {}), "total_ms": sum(r["ms"] for r in kernels.values()),
            "launches": int(sum(r["calls"] for r in kernels.values())),
            "by_kind_ms": dict(sorted(by_kind.items(), key=lambda kv: -kv[1])),
            "top": [{"name": n[:90], "kind": kernel_kind(n), **r} for n, r in top]}


def _timeline(prof) -> dict[str, float]:
    """When the GPU was busy: the span from the first kernel's start to the last one's end, the part of it
    with no kernel running (the device waiting on the host), and the lead from the first host op to the
    first kernel (ms)."""
    cuda = torch.autograd.DeviceType.CUDA
    events = prof.events()
    spans = sorted((e.time_range.start, e.time_range.end) for e in events
                   if e.device_type == cuda and not e.name.startswith("layerzero::"))
    host_start = min((e.time_range.start for e in events if e.device_type != cuda), default=None)
    if not spans:
        return {}
    busy, (cur_start, cur_end) = 0.0, spans[0]
    for start, end in spans[1:]:
        if start > cur_end:
            busy += cur_end - cur_start
            cur_start = start
        cur_end = max(cur_end, end)
    busy += cur_end - cur_start
    span = cur_end - spans[0][0]
    return {"gpu_span_ms": span / 1e3, "gpu_idle_ms": (span - busy) / 1e3,
            "lead_ms": (spans[0][0] - host_start) / 1e3 if host_start is not None else None}


def measure_variant(model, device: str, shapes: list[tuple[int, int]], vocab: int, warmup: int,
                    repeats: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for b, s in shapes:
        ids = torch.randint(3, vocab, (b, s), device=device, generator=None)

        def run() -> None:
            with torch.no_grad():
                model(ids, use_cache=False, logits_to_keep=1)

        wall = time_fn(run, device, warmup, repeats)
        out[f"{b}x{s}"] = {"wall_ms": wall * 1e3, **profile_call(run, device)}
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    import layerzero_hf

    device = "cpu" if args.quick or not torch.cuda.is_available() else "cuda"
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    config_class, cfg = PROFILE_ARCHS[args.arch]
    if args.quick and args.arch.endswith("-4l"):
        config_class, cfg = _arch_config(args.arch.removesuffix("-4l"), quick=True)
    elif args.quick:
        cfg = {**cfg, **TINY}
    shapes = [(1, 32), (2, 16)] if args.quick else [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")]
    warmup, repeats = (1, 2) if args.quick else (3, 10)
    vocab = cfg["vocab_size"]
    model = build_model(cfg, dtype, device, "sdpa", config_class=config_class)
    state = dict(model.state_dict())
    result: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "arch": args.arch,
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "dtype": str(dtype).removeprefix("torch."),
        "config": {k: v for k, v in cfg.items() if k != "rope_parameters"}, "versions": versions(), "variants": {},
    }
    variants = result["variants"]
    variants["hf_sdpa"] = measure_variant(model, device, shapes, vocab, warmup, repeats)
    if args.compiled:
        variants["hf_sdpa_compiled"] = measure_variant(torch.compile(model), device, shapes, vocab, warmup + 1, repeats)
        torch._dynamo.reset()
    layerzero_hf.patch(model, attention=True)
    variants["layerzero"] = measure_variant(model, device, shapes, vocab, warmup, repeats)
    snap = layerzero_hf.model_telemetry(model)["snapshot"]
    result["layerzero_kernels"] = {k: v.calls for k, v in snap.per_kernel.items() if v.calls}
    if args.compiled:
        variants["layerzero_compiled"] = measure_variant(torch.compile(model), device, shapes, vocab, warmup + 1,
                                                         repeats)
        torch._dynamo.reset()
    layerzero_hf.unpatch(model)
    del model
    gc.collect()
    if args.no_liger:
        return result
    try:
        liger = liger_model(cfg, dtype, device, state, config_class)
    except ImportError as exc:
        result["liger"] = f"not measured: {exc}"
    else:
        variants["liger"] = measure_variant(liger, device, shapes, vocab, warmup, repeats)
        result["liger"] = "measured"
    return result


def markdown(result: dict[str, Any]) -> str:
    v = result["versions"]
    lines = [f"# Prefill profile, {result['arch']} ({result['date']})", "",
             f"Device: {result['device']}; dtype {result['dtype']}; torch {v['torch']}, transformers "
             f"{v['transformers']}, triton {v.get('triton')}, liger-kernel {v.get('liger_kernel') or 'not installed'}; "
             f"commit {v['git']}. One profiled prefill per cell (`use_cache=False, logits_to_keep=1`), after "
             "warm-up; wall = median of 10 unprofiled calls.", "",
             f"LayerZero kernels: {result.get('layerzero_kernels')}", ""]
    variants = result["variants"]
    shapes = list(next(iter(variants.values())))
    kinds = sorted({k for var in variants.values() for cell in var.values() for k in cell["by_kind_ms"]})
    for shape in shapes:
        lines += [f"## {shape}: GPU ms by kernel kind", "",
                  "| variant | wall ms | GPU ms | GPU idle ms | first-kernel lead ms | launches | "
                  + " | ".join(kinds) + " |",
                  "|---|---:|---:|---:|---:|---:|" + "---:|" * len(kinds)]
        for name, var in variants.items():
            c = var[shape]
            idle = f"{c['gpu_idle_ms']:.2f}" if c.get("gpu_idle_ms") is not None else "-"
            lead = f"{c['lead_ms']:.2f}" if c.get("lead_ms") is not None else "-"
            lines.append(f"| {name} | {c['wall_ms']:.2f} | {c['total_ms']:.2f} | {idle} | {lead} | {c['launches']} | "
                         + " | ".join(f"{c['by_kind_ms'].get(k, 0.0):.2f}" for k in kinds) + " |")
        for name, var in variants.items():
            lines += ["", f"Top kernels, {name} at {shape}:", "", "| kernel | kind | calls | ms |", "|---|---|---:|---:|"]
            lines += [f"| `{t['name']}` | {t['kind']} | {t['calls']} | {t['ms']:.3f} |" for t in var[shape]["top"][:10]]
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", choices=sorted(PROFILE_ARCHS), default="llama-8b")
    ap.add_argument("--shapes", default="1x2048,8x512", help="batch x seq, comma-separated")
    ap.add_argument("--quick", action="store_true", help="CPU smoke test on a tiny config")
    ap.add_argument("--compiled", action="store_true", help="also profile torch.compile(model) of HF sdpa and of "
                    "the patched model (default mode; Inductor's kernels are named triton_*_fused_*)")
    ap.add_argument("--no-liger", action="store_true", help="skip the Liger-patched model")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--md", type=Path)
    args = ap.parse_args(argv)
    result = run(args)
    md = markdown(result)
    write_result(result, md, args.json, args.md)
    print(md)
    return result


if __name__ == "__main__":
    main()
