"""``layerzero bench`` and ``layerzero tune``: time kernels on a grid of shapes, fill the autotune cache.

Both time through :mod:`layerzero.tuning.measure` (the same harness as ``layerzero_hf.compare`` and the
AUTOTUNE dispatcher), which flags a measurement whose spread is too wide to trust as ``noisy``: a CLI
table that shows 78 us on one run and 7,995 us on the next for the same call must say so rather than
report a speed-up.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from layerzero.cli.common import (
    check_device,
    check_dtype,
    check_kernels,
    check_operation,
    clean_nans,
    console,
    esc,
    json_default,
    load_policy_or_exit,
    num,
    print_json,
    print_problems,
    usage,
    yes_no,
)


def _shapes(shapes_file: Optional[Path], ops: Optional[list[str]], device: str, dtype: Optional[str]) -> list[Any]:
    from layerzero.errors import ConfigValidationError
    from layerzero.operations import matches
    from layerzero.tuning.shapes import default_shapes, load_shapes

    for o in ops or ():
        check_operation("--op", o, globs=True)
    if shapes_file is not None:
        try:
            shapes = load_shapes(shapes_file, default_dtype=dtype)
        except ConfigValidationError as e:
            print_problems(e.problems)
            usage(f"--shapes {shapes_file} is invalid ({len(e.problems)} problem(s) above)")
    else:
        shapes = default_shapes(device)
    if dtype is not None:
        import dataclasses

        shapes = [dataclasses.replace(s, dtype=dtype) for s in shapes]
    if ops:
        shapes = [s for s in shapes if any(matches(o, s.operation) for o in ops)]
        if not shapes:
            usage(f"--op {', '.join(ops)} selects none of the shapes")
    return shapes


def _device(device: Optional[str]) -> str:
    import torch

    return check_device("--device", device, need_present=True) or ("cuda" if torch.cuda.is_available() else "cpu")


def _markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = ["# LayerZero kernel benchmark", "",
             f"device: {meta['device']} ({meta.get('device_name') or 'cpu'}), torch {meta['torch']}, "
             f"layerzero {meta['layerzero']}, timer {meta.get('timer', '?')}; rows marked noisy have a spread "
             f"(IQR / median) over {meta.get('noise_threshold', '?')}: their speed-ups are not to be trusted", ""]
    by_shape: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        by_shape.setdefault((r["operation"], r["shape"]), []).append(r)
    for (op, shape), group in by_shape.items():
        lines += [f"## {op}: {shape}", "",
                  "| kernel | backend | status | median us | p10 us | p90 us | spread | vs torch | vs reference | "
                  "max error |",
                  "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in group:
            lines.append(
                f"| {r['kernel_id']}{' **(chosen)**' if r['chosen'] else ''} | {r['backend']} | {r['status']} | "
                f"{num(r['median_us'], '.1f')} | {num(r['p10_us'], '.1f')} | {num(r['p90_us'], '.1f')} | "
                f"{num(r.get('spread'), '.0%')}{' **noisy**' if r.get('noisy') else ''} | "
                f"{num(r['speedup_vs_torch'], '.2f', 'x')} | {num(r['speedup_vs_reference'], '.2f', 'x')} | "
                f"{num(r['max_error'], '.2e')}{'' if r['ok'] else ' ' + str(r['error'] or 'failed')} |")
        lines.append("")
    return "\n".join(lines)


def bench(
    shapes: Annotated[Optional[Path], typer.Option("--shapes", help="YAML/JSON list of shapes (default: a small "
                                                                     "grid for the device).")] = None,
    op: Annotated[Optional[list[str]], typer.Option("--op", help="Only these operations (repeatable, globs).")] = None,
    kernel: Annotated[Optional[list[str]], typer.Option("--kernel", help="Only these kernels (repeatable); default: "
                                                                         "every kernel selection finds eligible.")] = None,
    device: Annotated[Optional[str], typer.Option(help="cpu | cuda | cuda:N (default: cuda when present).")] = None,
    dtype: Annotated[Optional[str], typer.Option(help="Override the shapes' dtype (float16, bfloat16, ...).")] = None,
    repeats: Annotated[int, typer.Option(min=1, help="Minimum timed samples per kernel (the harness may take "
                                                     "more to reach its time budget).")] = 20,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed calls first.")] = 3,
    policy: Annotated[Optional[Path], typer.Option(help="Policy deciding the chosen kernel.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Write results: .json or .md (markdown).")] = None,
    fmt: Annotated[Optional[str], typer.Option("--format", help="json | markdown (default: from --out).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON to stdout.")] = False,
    progress: Annotated[bool, typer.Option(help="Progress bar.")] = True,
) -> None:
    """Time every eligible kernel on each shape (median/p10/p90, spread and a noisy flag, speedups, max
    error vs the fp32 reference)."""
    import torch

    import layerzero
    from layerzero.dispatch import create_orchestrator
    from layerzero.dispatch.types import DispatchConfig
    from layerzero.tuning.kernel_compare import call_from_shape, measure_calls
    from layerzero.tuning.measure import NOISE_THRESHOLD, timer_name

    if fmt is not None and fmt not in ("json", "markdown", "md"):
        usage(f"--format {fmt!r}: use json or markdown")
    kind = None
    if out is not None:
        kind = fmt or ("json" if out.suffix == ".json" else "markdown" if out.suffix in (".md", ".markdown") else None)
        if kind is None:
            usage(f"--out {out}: cannot tell the format from the extension; pass --format json|markdown")
    dt = check_dtype("--dtype", dtype)
    dev = _device(device)
    shape_list = _shapes(shapes, op, dev, dt)
    pol, source = load_policy_or_exit(policy)
    orchestrator = create_orchestrator(DispatchConfig(enable_telemetry=False), policy=pol)
    if kernel:
        check_kernels("--kernel", kernel, orchestrator.kernel_registry)
    calls = [call_from_shape(s, torch.device(dev)) for s in shape_list]
    rows = measure_calls(calls, orchestrator, kernels=kernel, warmup=warmup, repeats=repeats, progress=progress,
                         desc="layerzero bench")
    meta = {"device": dev, "device_name": torch.cuda.get_device_name(dev) if dev.startswith("cuda") else None,
            "torch": torch.__version__, "layerzero": layerzero.__version__, "repeats": repeats, "warmup": warmup,
            "policy": source, "timer": timer_name(torch.device(dev)), "noise_threshold": NOISE_THRESHOLD}
    report = clean_nans({"meta": meta, "results": rows})
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(report, indent=2, default=json_default) if kind == "json" else _markdown(rows, meta)
        out.write_text(text + "\n")
    if json_out:
        print_json(report)
        return
    t = Table(title=f"layerzero bench on {dev} ({meta['timer']})")
    for col in ("operation", "shape", "kernel", "median us", "p10-p90 us", "spread", "vs torch", "max err", "ok"):
        t.add_column(col, justify="right" if col in ("median us", "p10-p90 us", "spread", "vs torch", "max err")
                     else "left")
    for r in rows:
        name = f"[bold green]{r['kernel_id']}[/bold green]" if r["chosen"] else r["kernel_id"]
        spread = num(r.get("spread"), ".0%") + (" [bold yellow]noisy[/bold yellow]" if r.get("noisy") else "")
        t.add_row(r["operation"], esc(r["shape"]), name, num(r["median_us"], ".1f"),
                  f"{num(r['p10_us'], '.1f')}-{num(r['p90_us'], '.1f')}", spread,
                  num(r["speedup_vs_torch"], ".2f", "x"), num(r["max_error"], ".1e"),
                  yes_no(r["ok"]) + ("" if r["ok"] else f" {esc(r['error'])}"))
    con = console()
    con.print(t)
    if any(r.get("noisy") for r in rows):
        con.print(f"[yellow]noisy[/yellow]: the spread (IQR / median) is over {NOISE_THRESHOLD:.0%}; another process "
                  "or thread contention disturbed the timing, so compare those rows with care or run again")
    if out is not None:
        con.print(f"wrote {out}")


def tune(
    shapes: Annotated[Optional[Path], typer.Option("--shapes", help="YAML/JSON list of shapes (default grid).")] = None,
    op: Annotated[Optional[list[str]], typer.Option("--op", help="Only these operations (repeatable, globs).")] = None,
    cache: Annotated[Optional[Path], typer.Option(help="Autotune cache file (default: the per-user cache).")] = None,
    device: Annotated[Optional[str], typer.Option(help="cpu | cuda | cuda:N (default: cuda when present).")] = None,
    dtype: Annotated[Optional[str], typer.Option(help="Override the shapes' dtype (float16, bfloat16, ...).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    progress: Annotated[bool, typer.Option(help="Progress bar.")] = True,
) -> None:
    """Fill the autotune cache ahead of time: time the conforming kernels of each shape, keep the fastest."""
    from layerzero.tuning.shapes import shape_label
    from layerzero.tuning.sweep import tune as run_tune

    dt = check_dtype("--dtype", dtype)
    dev = _device(device)
    shape_list = _shapes(shapes, op, dev, dt)
    if cache is not None and cache.is_dir():
        usage(f"--cache {cache} is a directory; pass a file path such as {cache / 'autotune.json'}")
    result = run_tune(shape_list, device=dev, cache_path=str(cache) if cache is not None else None,
                      progress=progress)
    chosen = result.get("chosen", {})
    rows = [{"shape": shape_label(s), "kernel_id": chosen.get(repr(s))} for s in shape_list]
    if json_out:
        print_json({"cache": result.get("cache"), "entries": result.get("entries"), "results": rows})
        return
    t = Table(title=f"layerzero tune on {dev}")
    t.add_column("shape")
    t.add_column("fastest conforming kernel")
    for r in rows:
        t.add_row(esc(r["shape"]), r["kernel_id"] or "-")
    con = console()
    con.print(t)
    con.print(f"cache: {result.get('cache')} ({result.get('entries')} entries)")
