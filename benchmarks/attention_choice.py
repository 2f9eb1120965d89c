"""How good is LayerZero's attention choice? Time every available kernel per shape (the oracle) and compare
with the kernel LayerZero picks by default priorities and with autotuning, in the same run.

Reports per shape: each kernel's median time (CUDA events), TFLOP/s, the chosen kernels and
chosen/best = best_time / chosen_time (1.0 = LayerZero picked the fastest). Goal: geomean >= 0.98,
worst >= 0.90.

    python benchmarks/attention_choice.py --out benchmarks/results/<date>-attention-choice-<device>
    python benchmarks/attention_choice.py --quick      # CPU smoke test (tiny shapes)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import platform
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from layerzero.dispatch import DispatchConfig, DispatchMode  # noqa: E402
from layerzero.dispatch.autotune import AutotuneDispatcher  # noqa: E402
from layerzero.dispatch.dynamic import DynamicDispatcher  # noqa: E402
from layerzero.selection import SelectionContext  # noqa: E402
from layerzero.tuning import TuningCache, conformance_problem, time_call  # noqa: E402

# (op, batch, seq_q, seq_k, heads, kv_heads, head_dim, dtype)
GPU_SHAPES = [
    ("attention.prefill", 1, 4096, 4096, 32, 8, 128, "bfloat16"),
    ("attention.prefill", 1, 4096, 4096, 32, 32, 128, "float16"),
    ("attention.prefill", 8, 1024, 1024, 32, 8, 128, "bfloat16"),
    ("attention.prefill", 32, 512, 512, 32, 8, 128, "bfloat16"),
    ("attention.prefill", 4, 2048, 2048, 16, 16, 64, "float16"),
    ("attention.prefill", 16, 512, 512, 12, 12, 64, "bfloat16"),
    ("attention.prefill", 2, 2048, 2048, 8, 8, 256, "bfloat16"),
    ("attention.prefill", 1, 8192, 8192, 32, 8, 128, "bfloat16"),
    ("attention.prefill", 64, 128, 128, 32, 8, 128, "float16"),
    ("attention.prefill", 1, 1024, 1024, 16, 4, 256, "float16"),
    ("attention.prefill", 8, 256, 256, 32, 32, 64, "bfloat16"),
    ("attention.prefill", 2, 512, 2048, 32, 8, 128, "bfloat16"),  # chunked prefill (bottom-right causal)
    ("attention.decode", 64, 1, 4096, 32, 8, 128, "bfloat16"),
    ("attention.decode", 256, 1, 1024, 32, 8, 128, "bfloat16"),
    ("attention.decode", 8, 1, 16384, 32, 8, 128, "bfloat16"),
    ("attention.decode", 1, 1, 2048, 32, 32, 128, "float16"),
    ("attention.decode", 32, 1, 2048, 16, 16, 64, "float16"),
    ("attention.decode", 16, 1, 8192, 8, 8, 256, "bfloat16"),
    ("attention.decode", 64, 1, 512, 32, 4, 128, "float16"),
    ("attention.decode", 4, 1, 32768, 32, 8, 128, "bfloat16"),
    ("attention.cross", 8, 256, 1024, 16, 16, 64, "float16"),
    ("attention.cross", 4, 1024, 1024, 32, 8, 128, "bfloat16"),
]
CPU_SHAPES = [
    ("attention.prefill", 1, 64, 64, 4, 2, 32, "float32"),
    ("attention.decode", 4, 1, 96, 4, 4, 32, "float32"),
    ("attention.cross", 2, 16, 48, 4, 4, 64, "float32"),
]


def flops(op, b, sq, sk, h, d):
    causal = op != "attention.cross"
    pairs = sq * sk - (sq * (sq - 1) / 2 if causal and sq > 1 else 0)
    return 4 * b * h * d * pairs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, help="path prefix: writes <out>.json and <out>.md")
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.quick
    device = torch.device("cuda" if cuda else "cpu")
    shapes = GPU_SHAPES if cuda else CPU_SHAPES
    repeats = args.repeats if cuda else 3
    default = DynamicDispatcher(DispatchConfig(enable_telemetry=False))
    tune_path = Path(tempfile.mkdtemp()) / "autotune.json"
    tuned = AutotuneDispatcher(
        DispatchConfig(mode=DispatchMode.AUTOTUNE, enable_telemetry=False, autotune_repeats=repeats, autotune_warmup=3),
        tuning_cache=TuningCache(tune_path),
    )
    rows = []
    for op, b, sq, sk, h, hkv, d, dtype in shapes:
        dt_ = getattr(torch, dtype)
        q = torch.randn(b, sq, h, d, device=device, dtype=dt_)
        k = torch.randn(b, sk, hkv, d, device=device, dtype=dt_)
        v = torch.randn(b, sk, hkv, d, device=device, dtype=dt_)
        inputs = {"query": q, "key": k, "value": v}
        kw = {"is_causal": op != "attention.cross"}
        ctx = SelectionContext.from_inputs(op, inputs, **kw)
        ex = default.explain(op, ctx)
        eligible = [c.kernel_id for c in ex.candidates if c.status != "rejected"]
        ref = None
        for kid in ("torch_sdpa_math_attention", "reference_attention"):
            if kid in eligible:
                try:
                    spec = default.kernel_registry.get(kid)
                    ref = spec.impl(**spec.map_arguments(inputs, kw))
                    break
                except Exception:
                    continue
        times, errors = {}, {}
        for kid in eligible:
            spec = default.kernel_registry.get(kid)
            args_ = spec.map_arguments(inputs, kw)
            try:
                out = spec.impl(**args_)
                if ref is not None:
                    problem = conformance_problem(out, ref, dt_)
                    if problem:
                        errors[kid] = problem
                        continue
                times[kid] = time_call(lambda: spec.impl(**args_), device, 3, repeats)
            except Exception as e:  # noqa: BLE001
                errors[kid] = f"{type(e).__name__}: {str(e)[:200]}"
            if device.type == "cuda":
                torch.cuda.empty_cache()
        if not times:
            continue
        best = min(times, key=times.get)
        chosen_default = ex.chosen
        chosen_tuned = tuned.dispatch(op, inputs, **kw).kernel_id
        fl = flops(op, b, sq, sk, h, d)

        def ratio(kid):
            return times[best] / times[kid] if kid in times else 0.0

        rows.append({
            "operation": op, "shape": [b, sq, sk, h, hkv, d], "dtype": dtype,
            "times_us": times, "tflops": {k: fl / (t * 1e-6) / 1e12 for k, t in times.items()},
            "rejected_at_run": errors, "best": best,
            "chosen_default": chosen_default, "ratio_default": ratio(chosen_default),
            "chosen_autotuned": chosen_tuned, "ratio_autotuned": ratio(chosen_tuned),
        })
        print(f"{op:18} {str((b, sq, sk, h, hkv, d)):32} {dtype:9} best={best:30} {times[best]:9.1f}us "
              f"default={chosen_default} ({ratio(chosen_default):.2f}) tuned={chosen_tuned} ({ratio(chosen_tuned):.2f})", flush=True)

    def geo(key):
        vals = [max(r[key], 1e-9) for r in rows]
        return math.exp(sum(math.log(v) for v in vals) / len(vals)) if vals else 0.0

    summary = {
        "shapes": len(rows),
        "geomean_default": geo("ratio_default"), "worst_default": min((r["ratio_default"] for r in rows), default=0),
        "geomean_autotuned": geo("ratio_autotuned"), "worst_autotuned": min((r["ratio_autotuned"] for r in rows), default=0),
    }
    meta = _meta(device)
    print(json.dumps(summary, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "summary": summary, "rows": rows}, indent=1))
        args.out.with_suffix(".md").write_text(_markdown(meta, summary, rows))
    return summary


def _meta(device):
    from layerzero.tuning import library_versions

    return {
        "date": dt.date.today().isoformat(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "versions": library_versions(),
        "python": platform.python_version(),
    }


def _markdown(meta, summary, rows):
    lines = [
        f"# Attention: LayerZero's choice vs every kernel ({meta['date']}, {meta['device']})",
        "",
        f"Versions: {', '.join(f'{k} {v}' for k, v in meta['versions'].items())}",
        "",
        f"chosen/best = best time / chosen time. Default priorities: geomean {summary['geomean_default']:.3f}, "
        f"worst {summary['worst_default']:.3f}. Autotuned: geomean {summary['geomean_autotuned']:.3f}, worst "
        f"{summary['worst_autotuned']:.3f} ({summary['shapes']} shapes).",
        "",
        "| op | B,Sq,Sk,H,Hkv,D | dtype | best (us) | best kernel | default | ratio | autotuned | ratio | all kernels (us) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        allk = ", ".join(f"{k.replace('_attention', '')} {t:.0f}" for k, t in sorted(r["times_us"].items(), key=lambda kv: kv[1]))
        lines.append(
            f"| {r['operation']} | {','.join(map(str, r['shape']))} | {r['dtype']} | {r['times_us'][r['best']]:.1f} | "
            f"{r['best']} | {r['chosen_default']} | {r['ratio_default']:.2f} | {r['chosen_autotuned']} | "
            f"{r['ratio_autotuned']:.2f} | {allk} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
