"""Time every available kernel of every operation over a shape grid, and check it against the reference.

For each (operation, shape) it runs each kernel of the global registry whose constraints accept the call:
warm-up, then repeated timed calls (CUDA events on a GPU, perf_counter on CPU), median. It reports
TFLOP/s for attention (4·B·H·D per visible query/key pair) and GB/s for memory-bound ops (bytes read +
written once), the max abs error against ``layerzero.kernels.reference``, and why rejected kernels were
rejected. Output: JSON + Markdown, with device name and library versions.

    python benchmarks/kernel_sweep.py                 # GPU grid, results under benchmarks/results/
    python benchmarks/kernel_sweep.py --quick         # tiny shapes: CPU smoke test for CI
    python benchmarks/kernel_sweep.py --out /tmp/run  # writes /tmp/run.json and /tmp/run.md
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from layerzero.kernels import reference as ref  # noqa: E402
from layerzero.registry import get_global_kernel_registry  # noqa: E402
from layerzero.context.call_context import SelectionContext  # noqa: E402


@dataclass
class Shape:
    operation: str
    label: str
    build: Callable[[torch.device, torch.dtype], tuple[dict[str, Any], dict[str, Any]]]
    work: Callable[[dict[str, Any], dict[str, Any]], float]  # flops (attention) or bytes
    unit: str  # "TFLOP/s" or "GB/s"


@dataclass
class Row:
    operation: str
    shape: str
    dtype: str
    kernel_id: str
    status: str  # "ok" | "rejected" | "error"
    median_ms: float | None = None
    throughput: float | None = None
    unit: str = ""
    max_abs_err: float | None = None
    detail: str = ""


@dataclass
class Report:
    device: str
    created: str
    versions: dict[str, str | None]
    quick: bool
    rows: list[Row] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------- shapes
def _visible_pairs(sq: int, sk: int, causal: bool, window: int | None) -> int:
    mask = ref.attention_allowed_mask(sq, sk, causal, window, "cpu")
    return sq * sk if mask is None else int(mask.sum())


def attention_shape(b, sq, sk, h, hkv, d, causal=True, window=None, softcap=None) -> Shape:
    op = "attention.decode" if sq == 1 else "attention.prefill"
    label = f"B{b} Sq{sq} Sk{sk} H{h}/{hkv} D{d}" + (" causal" if causal else "") + (
        f" win{window}" if window else "") + (f" cap{softcap}" if softcap else "")

    def build(dev, dtype):
        t = lambda *s: torch.randn(*s, device=dev, dtype=dtype)  # noqa: E731
        kw: dict[str, Any] = {"is_causal": causal}
        if window:
            kw["sliding_window"] = window
        if softcap:
            kw["softcap"] = softcap
        return {"query": t(b, sq, h, d), "key": t(b, sk, hkv, d), "value": t(b, sk, hkv, d)}, kw

    def work(inputs, kw):
        return 4.0 * b * h * d * _visible_pairs(sq, sk, causal, window)

    return Shape(op, label, build, work, "TFLOP/s")


def _bytes(*tensors) -> float:
    return float(sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor)))


def rms_norm_shape(rows: int, hidden: int, casting="llama", offset=0.0) -> Shape:
    def build(dev, dtype):
        return ({"x": torch.randn(rows, hidden, device=dev, dtype=dtype),
                 "weight": torch.randn(hidden, device=dev, dtype=dtype)},
                {"eps": 1e-6, "casting": casting, "offset": offset})

    return Shape("rms_norm", f"{rows}x{hidden} {casting}" + (f" off{offset}" if offset else ""), build,
                 lambda i, k: 2 * _bytes(i["x"]) + _bytes(i["weight"]), "GB/s")


def layer_norm_shape(rows: int, hidden: int) -> Shape:
    def build(dev, dtype):
        return ({"x": torch.randn(rows, hidden, device=dev, dtype=dtype),
                 "weight": torch.randn(hidden, device=dev, dtype=dtype),
                 "bias": torch.randn(hidden, device=dev, dtype=dtype)}, {"eps": 1e-5})

    return Shape("layer_norm", f"{rows}x{hidden}", build, lambda i, k: 2 * _bytes(i["x"]), "GB/s")


def rope_shape(b: int, h: int, hk: int, s: int, d: int) -> Shape:
    def build(dev, dtype):
        inv = 1.0 / (10000 ** (torch.arange(0, d, 2, device=dev, dtype=torch.float32) / d))
        freqs = torch.arange(s, device=dev, dtype=torch.float32)[:, None] * inv
        emb = torch.cat((freqs, freqs), -1)
        cos = emb.cos().to(dtype).expand(b, s, d).contiguous()
        sin = emb.sin().to(dtype).expand(b, s, d).contiguous()
        q = torch.randn(b, s, h, d, device=dev, dtype=dtype).transpose(1, 2)  # HF's transposed view
        k = torch.randn(b, s, hk, d, device=dev, dtype=dtype).transpose(1, 2)
        return {"q": q, "k": k, "cos": cos, "sin": sin}, {"layout": "bhsd"}

    return Shape("rope", f"B{b} H{h}/{hk} S{s} D{d} bhsd", build,
                 lambda i, k: 2 * _bytes(i["q"], i["k"]) + _bytes(i["cos"], i["sin"]), "GB/s")


def gated_shape(op: str, rows: int, inter: int) -> Shape:
    def build(dev, dtype):
        kw = {"approximate": "tanh"} if op == "geglu" else {}
        return ({"gate": torch.randn(rows, inter, device=dev, dtype=dtype),
                 "up": torch.randn(rows, inter, device=dev, dtype=dtype)}, kw)

    return Shape(op, f"{rows}x{inter}", build, lambda i, k: 3 * _bytes(i["gate"]), "GB/s")


def shape_grid(quick: bool) -> list[Shape]:
    if quick:
        return [
            attention_shape(1, 16, 16, 4, 2, 32),
            attention_shape(2, 1, 24, 4, 2, 32),
            rms_norm_shape(8, 64),
            layer_norm_shape(8, 64),
            rope_shape(1, 4, 2, 8, 32),
            gated_shape("swiglu", 8, 64),
            gated_shape("geglu", 8, 64),
        ]
    return [
        attention_shape(1, 4096, 4096, 32, 8, 128),
        attention_shape(4, 1024, 1024, 32, 8, 128),
        attention_shape(8, 512, 512, 32, 32, 64),
        attention_shape(2, 2048, 2048, 8, 4, 256, window=1024, softcap=50.0),  # Gemma-2 style layer
        attention_shape(64, 1, 4096, 32, 8, 128),  # decode
        attention_shape(256, 1, 1024, 32, 8, 128),
        rms_norm_shape(16384, 4096),
        rms_norm_shape(128, 4096),
        rms_norm_shape(16384, 2304, casting="gemma", offset=1.0),
        layer_norm_shape(16384, 4096),
        rope_shape(8, 32, 8, 2048, 128),
        gated_shape("swiglu", 16384, 8192),
        gated_shape("swiglu", 128, 8192),
        gated_shape("geglu", 16384, 8192),
    ]


# ----------------------------------------------------------------------------------------------- timing
def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def time_call(fn: Callable[[], Any], dev: torch.device, warmup: int, budget_s: float, max_iters: int) -> float:
    """Median milliseconds of ``fn`` after warm-up (compiles, JIT builds and autotuning happen there)."""
    for _ in range(warmup):
        fn()
    _sync(dev)
    t0 = time.perf_counter()
    fn()
    _sync(dev)
    once = max(time.perf_counter() - t0, 1e-6)
    iters = int(min(max_iters, max(3, budget_s / once)))
    samples: list[float] = []
    if dev.type == "cuda":
        for _ in range(iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
    else:
        for _ in range(iters):
            t = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t) * 1e3)
    return statistics.median(samples)


def _max_err(out: Any, expected: Any) -> float:
    outs = out if isinstance(out, tuple) else (out,)
    exps = expected if isinstance(expected, tuple) else (expected,)
    return max(float((o.float() - e.float()).abs().max()) for o, e in zip(outs, exps))


REFERENCE = {"rms_norm": ref.rms_norm, "layer_norm": ref.layer_norm, "rope": ref.rope, "swiglu": ref.swiglu,
             "geglu": ref.geglu}


def _reference_for(op: str):
    return ref.attention if op.startswith("attention") else REFERENCE[op]


def sweep(shapes: list[Shape], dev: torch.device, dtype: torch.dtype, quick: bool, only: set[str] | None,
          log: Callable[[str], None]) -> list[Row]:
    registry = get_global_kernel_registry()
    rows: list[Row] = []
    warmup, budget, max_iters = (1, 0.05, 5) if quick else (3, 0.3, 50)
    dname = str(dtype).removeprefix("torch.")
    for shape in shapes:
        if only and shape.operation.split(".")[0] not in only and shape.operation not in only:
            continue
        inputs, kwargs = shape.build(dev, dtype)
        ctx = SelectionContext.from_inputs(shape.operation, inputs, **kwargs)
        expected = None
        for spec in registry.get_by_operation(shape.operation):
            reasons = spec.check(ctx)
            if reasons:
                rows.append(Row(shape.operation, shape.label, dname, spec.kernel_id, "rejected", detail="; ".join(reasons)))
                continue
            args = spec.map_arguments(inputs, kwargs)
            try:
                with torch.no_grad():
                    out = spec.impl(**args)
                    if expected is None:
                        expected = _reference_for(shape.operation)(**{k: v for k, v in args.items() if k != "enable_gqa"})
                    err = _max_err(out, expected)
                    del out
                    ms = time_call(lambda: spec.impl(**args), dev, warmup, budget, max_iters)
            except Exception as e:  # a kernel that accepted the call but failed: report, keep sweeping
                rows.append(Row(shape.operation, shape.label, dname, spec.kernel_id, "error",
                                detail=f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"))
                log(f"  {spec.kernel_id}: ERROR {type(e).__name__}")
                continue
            scale = 1e12 if shape.unit == "TFLOP/s" else 1e9
            thr = shape.work(inputs, kwargs) / (ms / 1e3) / scale
            rows.append(Row(shape.operation, shape.label, dname, spec.kernel_id, "ok", ms, thr, shape.unit, err))
            log(f"  {shape.operation} {shape.label} {spec.kernel_id}: {ms:.4g} ms {thr:.4g} {shape.unit} err {err:.2e}")
        del inputs, expected
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return rows


# ----------------------------------------------------------------------------------------------- output
def versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {"python": platform.python_version(), "torch": torch.__version__,
                                  "cuda": torch.version.cuda}
    for name in ("triton", "flashinfer-python", "liger-kernel", "flash-attn", "xformers", "transformers"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    if torch.cuda.is_available() and torch.backends.cudnn.is_available():
        out["cudnn"] = str(torch.backends.cudnn.version())
    return out


def device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return platform.processor() or platform.machine() or "cpu"


def to_markdown(report: Report) -> str:
    lines = [
        f"# Kernel sweep — {report.device}",
        "",
        f"Created {report.created}{' (quick smoke test)' if report.quick else ''}. Versions: "
        + ", ".join(f"{k} {v}" for k, v in report.versions.items() if v),
        "",
        "Median of repeated calls after warm-up (CUDA events on GPU). Attention: TFLOP/s over visible "
        "query/key pairs (4·B·H·D each). Others: GB/s of bytes read + written once. `max err` is the max abs "
        "difference from the fp32 reference on the same inputs.",
        "",
    ]
    groups: dict[tuple[str, str, str], list[Row]] = {}
    for r in report.rows:
        groups.setdefault((r.operation, r.shape, r.dtype), []).append(r)
    for (op, shape, dtype), rows in groups.items():
        lines += [f"## {op} — {shape} ({dtype})", "", "| kernel | ms | throughput | max err | note |",
                  "|---|---:|---:|---:|---|"]
        ok = sorted((r for r in rows if r.status == "ok"), key=lambda r: r.median_ms or 0)
        for r in ok:
            lines.append(f"| {r.kernel_id} | {r.median_ms:.4g} | {r.throughput:.4g} {r.unit} | {r.max_abs_err:.2e} | |")
        for r in rows:
            if r.status != "ok":
                lines.append(f"| {r.kernel_id} | — | — | — | {r.status}: {r.detail.replace('|', '/')} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny shapes, few iterations (CPU smoke test)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--dtype", default=None, help="float16 / bfloat16 / float32 (default: bf16 on GPU, fp32 on CPU)")
    p.add_argument("--ops", default=None, help="comma-separated operations to run (attention,rms_norm,...)")
    p.add_argument("--out", default=None, help="output path prefix (writes .json and .md); "
                                               "default benchmarks/results/<date>-kernels-<device>")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    dev = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, a.dtype) if a.dtype else (torch.bfloat16 if dev.type == "cuda" else torch.float32)
    only = set(a.ops.split(",")) if a.ops else None
    log = (lambda s: None) if a.quiet else (lambda s: print(s, flush=True))
    name = device_name(dev)
    report = Report(name, _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), versions(), a.quick)
    report.rows = sweep(shape_grid(a.quick), dev, dtype, a.quick, only, log)
    if a.out:
        prefix = Path(a.out)
    else:
        slug = "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-") or "cpu"
        prefix = ROOT / "benchmarks" / "results" / f"{_dt.date.today().isoformat()}-kernels-{slug}"
    prefix.parent.mkdir(parents=True, exist_ok=True)
    prefix.with_suffix(".json").write_text(json.dumps(asdict(report), indent=1))
    prefix.with_suffix(".md").write_text(to_markdown(report))
    errors = [r for r in report.rows if r.status == "error"]
    log(f"wrote {prefix}.json / .md: {sum(r.status == 'ok' for r in report.rows)} timed, {len(errors)} errors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
