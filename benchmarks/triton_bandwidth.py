"""Memory bandwidth of LayerZero's Triton kernels against their peers, in one process.

Why: rms_norm, rope and gated activations are bandwidth-bound, so the honest yardstick is bytes moved
(each input read once, each output written once) over time, compared with a plain device-to-device copy
measured in the same run. Peers: ``F.rms_norm``, Liger-Kernel (when importable), ``torch.compile`` of
the eager reference, and the eager HF-style code.

    python benchmarks/triton_bandwidth.py --json out.json --md out.md            # CUDA
    python benchmarks/triton_bandwidth.py --tune                                 # launch-config sweep
    TRITON_INTERPRET=1 python benchmarks/triton_bandwidth.py --quick --json ...  # CPU smoke test (CI)

Timing: CUDA events around each call, warm-up first, median of many calls (inputs are larger than L2,
so repeated calls do not measure the cache). Every implementation's output is checked against the fp32
reference (max abs error reported) before it is timed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "benchmarks"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from hf_eager_peers import (  # noqa: E402
    eager_geglu,
    eager_swiglu,
    hf_add_rms_norm,
    hf_apply_rotary_pos_emb,
    hf_llama_rms_norm,
)


# ---------------------------------------------------------------------------------------------- timing
# GPU busy-wait queued before each timed call (~100 us): the host enqueues the start event, the call and
# the end event while the GPU is still busy, so the events measure device time only, not the Python launch
# overhead (which ``wall_ms`` reports separately).
_SLEEP_CYCLES = 200_000


def _time_cuda(fn: Callable[[], Any], warmup: int, reps: int) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for s, e in zip(starts, ends):
        torch.cuda._sleep(_SLEEP_CYCLES)
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends))


def wall_ms(fn: Callable[[], Any], device: str, calls: int) -> float:
    """Wall-clock per call of back-to-back calls: device time, or host launch cost when that is larger."""
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) * 1e3 / calls


def _time_cpu(fn: Callable[[], Any], warmup: int, reps: int) -> float:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(out)


def time_ms(fn: Callable[[], Any], device: str, warmup: int, reps: int) -> float:
    return _time_cuda(fn, warmup, reps) if device == "cuda" else _time_cpu(fn, warmup, reps)


# ---------------------------------------------------------------------------------------------- peers
def _liger() -> Any:
    try:
        import liger_kernel  # noqa: F401
        from liger_kernel.ops import geglu, rms_norm, rope, swiglu

        try:
            from liger_kernel.ops.fused_add_rms_norm import LigerFusedAddRMSNormFunction
        except ImportError:
            LigerFusedAddRMSNormFunction = None
        return {
            "rms_norm": rms_norm.LigerRMSNormFunction,
            "fused_add_rms_norm": LigerFusedAddRMSNormFunction,
            "rope": rope.LigerRopeFunction,
            "swiglu": swiglu.LigerSiLUMulFunction,
            "geglu": geglu.LigerGELUMulFunction,
        }
    except Exception as e:  # not installed, or broken for this torch/triton
        return str(e)


# ---------------------------------------------------------------------------------------------- cases
@dataclass
class Case:
    op: str
    name: str
    bytes_moved: int
    make_impls: Callable[[], dict[str, Callable[[], Any]]]
    reference: Callable[[], Any]
    notes: str = ""
    results: dict[str, dict[str, Any]] = field(default_factory=dict)


def _nbytes(*ts: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in ts)


def _max_err(out: Any, ref: Any) -> float:
    outs = out if isinstance(out, (tuple, list)) else (out,)
    refs = ref if isinstance(ref, (tuple, list)) else (ref,)
    err = 0.0
    for o, r in zip(outs, refs):
        d = (o.float() - r.float()).abs().max().item()
        err = max(err, d if not math.isnan(d) else float("inf"))
    return err


def build_cases(device: str, dtype: torch.dtype, quick: bool, liger: Any, compile_peers: bool) -> list[Case]:
    from layerzero.kernels import reference
    from layerzero.kernels.triton.rms_norm import rms_norm
    from layerzero.kernels.triton.rope import rope
    from layerzero.kernels.triton.swiglu import geglu, swiglu

    has_liger = isinstance(liger, dict)
    compiled: dict[str, Callable] = {}

    def comp(name: str, fn: Callable) -> Callable:
        if name not in compiled:
            compiled[name] = torch.compile(fn, dynamic=False)
        return compiled[name]

    cases: list[Case] = []
    eps = 1e-6
    norm_shapes = [(64, 256), (33, 1000)] if quick else [
        (16384, 4096), (32768, 8192), (16384, 2048), (128, 4096), (524288, 128)]
    for m, n in norm_shapes:
        x = torch.randn(m, n, device=device, dtype=dtype)
        w = torch.randn(n, device=device, dtype=dtype)

        def impls(x=x, w=w, n=n):
            d = {
                "triton": lambda: rms_norm(x, w, eps),
                "torch_F.rms_norm": lambda: F.rms_norm(x, (n,), w, eps),
                "hf_eager": lambda: hf_llama_rms_norm(x, w, eps),
            }
            if compile_peers:
                d["torch_compile(hf)"] = lambda: comp(f"rms{m}x{n}", hf_llama_rms_norm)(x, w, eps)
            if has_liger:
                d["liger"] = lambda: liger["rms_norm"].apply(x, w, eps, 0.0, "llama", False)
            return d

        cases.append(Case("rms_norm", f"rms_norm {m}x{n}", _nbytes(x, x, w), impls,
                          lambda x=x, w=w: reference.rms_norm(x, w, eps)))
    for m, n in ([(64, 256)] if quick else [(16384, 4096), (16384, 2048), (128, 4096)]):
        x = torch.randn(m, n, device=device, dtype=dtype)
        r = torch.randn(m, n, device=device, dtype=dtype)
        w = torch.randn(n, device=device, dtype=dtype)

        def impls(x=x, r=r, w=w, n=n):
            def torch_add_norm():
                h = x + r
                return F.rms_norm(h, (n,), w, eps), h

            d = {
                "triton": lambda: rms_norm(x, w, eps, residual=r),
                "torch_add+F.rms_norm": torch_add_norm,
                "hf_eager": lambda: hf_add_rms_norm(x, r, w, eps),
            }
            if compile_peers:
                d["torch_compile(hf)"] = lambda: comp(f"addrms{m}x{n}", hf_add_rms_norm)(x, r, w, eps)
            if has_liger and liger.get("fused_add_rms_norm") is not None:
                d["liger"] = lambda: liger["fused_add_rms_norm"].apply(x, r, w, eps, 0.0, "llama", False)
            return d

        cases.append(Case("rms_norm+residual", f"add+rms_norm {m}x{n}", _nbytes(x, r, x, x, w), impls,
                          lambda x=x, r=r, w=w: reference.rms_norm(x, w, eps, residual=r)))

    rope_shapes = [(2, 16, 4, 2, 32)] if quick else [(8, 2048, 32, 8, 128), (8, 2048, 32, 8, 64), (64, 1, 32, 8, 128)]
    for b, s, hq, hk, d in rope_shapes:
        # HF layout: projections (B, S, H, D) viewed as (B, H, S, D)
        q = torch.randn(b, s, hq, d, device=device, dtype=dtype).transpose(1, 2)
        k = torch.randn(b, s, hk, d, device=device, dtype=dtype).transpose(1, 2)
        ang = torch.randn(b, s, d // 2, device=device)
        emb = torch.cat((ang, ang), -1)
        cos, sin = emb.cos().to(dtype), emb.sin().to(dtype)

        def impls(q=q, k=k, cos=cos, sin=sin, key=f"{b}x{s}"):
            dd = {
                "triton": lambda: rope(q, k, cos, sin),
                "hf_eager": lambda: hf_apply_rotary_pos_emb(q, k, cos, sin),
            }
            if compile_peers:
                dd["torch_compile(hf)"] = lambda: comp(f"rope{key}", hf_apply_rotary_pos_emb)(q, k, cos, sin)
            if has_liger:
                # Liger rotates in place into its contiguous copy of q/k (HF views: the projection buffer)
                ql, kl = q.clone(), k.clone()
                dd["liger"] = lambda: liger["rope"].apply(ql, kl, cos, sin)
            return dd

        cases.append(Case("rope", f"rope B{b} S{s} Hq{hq} Hkv{hk} D{d}", _nbytes(q, k, q, k, cos, sin), impls,
                          lambda q=q, k=k, cos=cos, sin=sin: reference.rope(q, k, cos, sin),
                          notes="q/k are HF's transposed views of (B, S, H, D)"))

    glu_shapes = [(64, 300)] if quick else [(16384, 14336), (128, 14336)]
    for m, n in glu_shapes:
        g = torch.randn(m, n, device=device, dtype=dtype)
        u = torch.randn(m, n, device=device, dtype=dtype)

        def impls(g=g, u=u, key=f"{m}x{n}"):
            dd = {"triton": lambda: swiglu(g, u), "eager": lambda: eager_swiglu(g, u)}
            if compile_peers:
                dd["torch_compile(eager)"] = lambda: comp(f"swiglu{key}", eager_swiglu)(g, u)
            if has_liger:
                dd["liger"] = lambda: liger["swiglu"].apply(g, u)
            return dd

        cases.append(Case("swiglu", f"swiglu {m}x{n}", _nbytes(g, u, g), impls,
                          lambda g=g, u=u: reference.swiglu(g, u)))

        def gimpls(g=g, u=u, key=f"{m}x{n}"):
            dd = {"triton": lambda: geglu(g, u), "eager": lambda: eager_geglu(g, u)}
            if compile_peers:
                dd["torch_compile(eager)"] = lambda: comp(f"geglu{key}", eager_geglu)(g, u)
            if has_liger:
                dd["liger"] = lambda: liger["geglu"].apply(g, u)
            return dd

        cases.append(Case("geglu", f"geglu(tanh) {m}x{n}", _nbytes(g, u, g), gimpls,
                          lambda g=g, u=u: reference.geglu(g, u, "tanh")))
        if quick:
            break
    return cases


def copy_bandwidth(device: str, quick: bool, warmup: int, reps: int) -> dict[str, float]:
    """Device-to-device copy, bytes read + written: the practical ceiling for these kernels."""
    n = (1 << 16) if quick else (1 << 29)  # 1 GiB of bf16
    src = torch.randn(n, device=device, dtype=torch.float32).to(torch.bfloat16)
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), device, warmup, reps)
    return {"bytes": 2 * _nbytes(src), "ms": ms, "gbps": 2 * _nbytes(src) / ms / 1e6}


def run_cases(cases: list[Case], device: str, warmup: int, reps: int, copy_gbps: float) -> None:
    for case in cases:
        ref = case.reference()
        for name, fn in case.make_impls().items():
            entry: dict[str, Any] = {}
            try:
                entry["max_abs_err"] = _max_err(fn(), ref)
                ms = time_ms(fn, device, warmup, reps)
                entry.update(ms=ms, gbps=case.bytes_moved / ms / 1e6, pct_of_copy=100 * case.bytes_moved / ms / 1e6 / copy_gbps)
                entry["wall_ms"] = wall_ms(fn, device, reps)
            except Exception as e:  # a peer that cannot run this case is reported, not fatal
                entry["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            case.results[name] = entry
            if device == "cuda":
                torch.cuda.synchronize()
        del ref
        best_peer = min((r["ms"] for n_, r in case.results.items() if n_ != "triton" and "ms" in r), default=None)
        tri = case.results.get("triton", {})
        if best_peer and "ms" in tri:
            tri["speedup_vs_best_peer"] = best_peer / tri["ms"]
        print(f"{case.name}: " + ", ".join(
            f"{n_} {r['ms']:.4f} ms {r['gbps']:.0f} GB/s" if "ms" in r else f"{n_} ERROR {r['error']}"
            for n_, r in case.results.items()), flush=True)


# ---------------------------------------------------------------------------------------------- tuning
def _report_group(op: str, shape: str, rs: list[dict[str, Any]]) -> None:
    best = min(rs, key=lambda r: r["ms"])
    dflt = next((r for r in rs if r["default"]), None)
    top = sorted(rs, key=lambda r: r["ms"])[:4]
    print(f"TUNE {op:13s} {shape:22s} best {best['config']} {best['gbps']:.0f} GB/s | default "
          f"{dflt['config'] if dflt else '-'} {dflt['gbps'] if dflt else float('nan'):.0f} GB/s | top "
          + "; ".join(f"{r['config']}:{r['gbps']:.0f}" for r in top), flush=True)


def tune(device: str, dtype: torch.dtype, warmup: int, reps: int, ops: set[str]) -> list[dict[str, Any]]:
    """Sweep launch configs and the streaming-load cache policy at benchmark shapes; the best ones inform
    the launch_config() heuristics of each kernel module."""
    from layerzero.kernels.triton import rms_norm as rn
    from layerzero.kernels.triton import rope as rp
    from layerzero.kernels.triton import swiglu as sw

    rows: list[dict[str, Any]] = []
    variants = [("evict_first", ""), ("", ""), ("evict_first", ".cs"), ("", ".cs")]

    def record(mod: Any, op: str, shape: str, cfg: Any, default: Any, fn: Callable[[], Any], nbytes: int,
               group: list) -> None:
        saved = (mod.EVICT, mod.STORE)
        for evict, store in variants:
            mod.EVICT, mod.STORE = evict, store
            ms = time_ms(fn, device, warmup, reps)
            tag = f"{evict or 'ld-default'}/{store or 'st-default'}"
            row = dict(op=op, shape=shape, config=(*cfg, tag), default=cfg == default and (evict, store) == saved,
                       ms=ms, gbps=nbytes / ms / 1e6)
            rows.append(row)
            group.append(row)
        mod.EVICT, mod.STORE = saved

    norm_shapes = [(16384, 4096, True), (32768, 8192, False), (16384, 2048, True), (524288, 128, False)]
    for m, n, with_res in norm_shapes if "rms_norm" in ops else []:
        x = torch.randn(m, n, device=device, dtype=dtype)
        w = torch.randn(n, device=device, dtype=dtype)
        r = torch.randn(m, n, device=device, dtype=dtype)
        bn = 1 << (n - 1).bit_length()
        default = rn.launch_config(m, n)
        peer = time_ms(lambda: F.rms_norm(x, (n,), w, 1e-6), device, warmup, reps)
        print(f"TUNE peer F.rms_norm {m}x{n}: {_nbytes(x, x) / peer / 1e6:.0f} GB/s", flush=True)
        cfgs = sorted({(max(1, t // bn), bn, nw, 1) for t in (2048, 4096, 8192) for nw in (4, 8, 16)
                       if nw * 32 * 2 <= max(1, t // bn) * bn} | {default})
        for res in (False, True) if with_res else (False,):
            group: list = []
            for cfg in cfgs:
                fn = (lambda cfg=cfg: rn.rms_norm(x, w, residual=r, _config=cfg)) if res else (
                    lambda cfg=cfg: rn.rms_norm(x, w, _config=cfg))
                record(rn, "rms_norm" + ("+res" if res else ""), f"{m}x{n}", cfg, default, fn,
                       _nbytes(x, x) * (2 if res else 1), group)
            _report_group("rms_norm" + ("+res" if res else ""), f"{m}x{n}", group)
        del x, w, r
    rope_shapes = [(8, 2048, 32, 8, 128), (8, 2048, 32, 8, 64), (8, 2048, 32, 32, 96)]
    for b, s_, hq, hk, d in rope_shapes if "rope" in ops else []:
        q = torch.randn(b, s_, hq, d, device=device, dtype=dtype).transpose(1, 2)
        k = torch.randn(b, s_, hk, d, device=device, dtype=dtype).transpose(1, 2)
        emb = torch.randn(b, s_, d, device=device)
        cos, sin = emb.cos().to(dtype), emb.sin().to(dtype)
        default = rp.launch_config(b * s_, hq, hk, d // 2)
        pq, pk = 1 << (hq - 1).bit_length(), 1 << (hk - 1).bit_length()
        group = []
        cfgs = sorted({(1, min(bh, pq), min(bh, pk), nw) for bh in (8, 16, 32) for nw in (2, 4, 8)} | {default})
        for cfg in cfgs:
            record(rp, "rope", f"{b}x{s_}x{hq}/{hk}x{d}", cfg, default,
                   lambda cfg=cfg: rp.rope(q, k, cos, sin, _config=cfg), _nbytes(q, k, q, k), group)
        _report_group("rope", f"{b}x{s_}x{hq}/{hk}x{d}", group)
        del q, k
    for m, n in [(16384, 14336)] if "swiglu" in ops else []:
        g = torch.randn(m, n, device=device, dtype=dtype)
        u = torch.randn(m, n, device=device, dtype=dtype)
        group = []
        default = (sw._FLAT_BLOCK, sw._num_warps(sw._FLAT_BLOCK))
        for cfg in ((1024, 4), (2048, 4), (2048, 8), (4096, 8), (8192, 16)):
            record(sw, "swiglu", f"{m}x{n}", cfg, default,
                   lambda cfg=cfg: sw.swiglu(g, u, _config=cfg), _nbytes(g, u, g), group)
        _report_group("swiglu", f"{m}x{n}", group)
        del g, u
    return rows


# ---------------------------------------------------------------------------------------------- report
def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version(), "torch": torch.__version__}
    for mod in ("triton", "liger_kernel"):
        try:
            from importlib.metadata import version

            out[mod] = version(mod.replace("_", "-")) if mod != "triton" else __import__("triton").__version__
        except Exception:
            out[mod] = None
    out["cuda"] = torch.version.cuda
    return out


def to_markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Triton kernel bandwidth ({report['date']})",
        "",
        f"Device: {report['device_name']}; dtype {report['dtype']}; versions: "
        + ", ".join(f"{k} {v}" for k, v in report["versions"].items()),
        f"Copy bandwidth (read+write, {report['copy']['bytes'] / 2**30:.1f} GiB moved): "
        f"**{report['copy']['gbps']:.0f} GB/s**. Timing: {'CUDA events' if report['device'] == 'cuda' else 'perf_counter (CPU, Triton interpreter: a smoke test, not a measurement)'}, {report['warmup']} warm-up calls, "
        f"median of {report['reps']}. Bytes = each input read once + each output written once.",
        f"Liger: {report['liger']}.",
        "",
        "`ms` is device time per call (CUDA events, the host queued ahead); `wall ms` is wall-clock per call "
        "of back-to-back calls, which shows the host launch cost where it exceeds the device time (small shapes).",
        "",
        "| case | implementation | ms | GB/s | % of copy | wall ms | max abs err vs fp32 ref | triton speedup vs best peer |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for case in report["cases"]:
        for name, r in case["results"].items():
            if "ms" not in r:
                lines.append(f"| {case['name']} | {name} | error: {r.get('error')} | | | | | |")
                continue
            sp = r.get("speedup_vs_best_peer")
            lines.append(
                f"| {case['name']} | {name} | {r['ms']:.4f} | {r['gbps']:.0f} | {r['pct_of_copy']:.0f}% | {r['wall_ms']:.4f} | "
                f"{r['max_abs_err']:.3g} | {f'{sp:.2f}x' if sp else ''} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, help="write the full results here")
    ap.add_argument("--md", type=Path, help="write a markdown table here")
    ap.add_argument("--quick", action="store_true", help="tiny shapes, few repetitions (CPU smoke test)")
    ap.add_argument("--tune", action="store_true", help="sweep launch configurations instead")
    ap.add_argument("--tune-ops", default="rms_norm,rope,swiglu", help="comma-separated ops to sweep")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile peers")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--reps", type=int, default=None)
    args = ap.parse_args(argv)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        if not args.quick:
            ap.error("no CUDA device: run with --quick (tiny shapes through the Triton interpreter)")
        os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the first kernel-module import
    dtype = getattr(torch, args.dtype)
    warmup = 1 if args.quick else 10
    reps = args.reps or (3 if args.quick else 100)
    torch.manual_seed(0)

    if args.tune:
        rows = tune(device, dtype, warmup=5, reps=args.reps or 30, ops=set(args.tune_ops.split(",")))
        if args.json:
            args.json.write_text(json.dumps({"device_name": _device_name(device), "rows": rows}, indent=1, default=str))
        return 0

    liger = _liger() if device == "cuda" else "not used on CPU"
    compile_peers = device == "cuda" and not args.no_compile
    copy = copy_bandwidth(device, args.quick, warmup, reps)
    print(f"copy: {copy['gbps']:.0f} GB/s", flush=True)
    cases = build_cases(device, dtype, args.quick, liger, compile_peers)
    run_cases(cases, device, warmup, reps, copy["gbps"])
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "device": device,
        "device_name": _device_name(device),
        "dtype": args.dtype,
        "versions": versions(),
        "liger": "available" if isinstance(liger, dict) else f"not available ({liger})",
        "triton_interpret": os.environ.get("TRITON_INTERPRET"),
        "warmup": warmup,
        "reps": reps,
        "copy": copy,
        "cases": [
            {"op": c.op, "name": c.name, "bytes": c.bytes_moved, "notes": c.notes, "results": c.results} for c in cases
        ],
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
    md = to_markdown(report)
    if args.md:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text(md)
    print(md)
    failures = [(c.name, n) for c in cases for n, r in c.results.items() if n == "triton" and "ms" not in r]
    if failures:
        print(f"triton kernels failed: {failures}", file=sys.stderr)
        return 1
    return 0


def _device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device == "cuda" else f"cpu ({platform.processor() or platform.machine()})"


if __name__ == "__main__":
    raise SystemExit(main())
