"""Host cost of each eligible kernel at the calls a decode step really makes, beside its GPU time.

A batch-8 decode step of a 2B model is host-bound: the GPU waits for the CPU to issue the next kernel.
There a kernel's cost is what it takes to *launch* (argument checks, allocations, Triton's launcher), not
its device time, and a ranking by device time (``triton.testing.do_bench``) picks the wrong kernel. For
each distinct decode call of the model (recorded with :func:`layerzero_hf.conformance.recording.record_calls`)
and each eligible kernel this reports:

* ``gpu_us``: device time per call (the measurement cost tables use);
* ``issue_us``: host time per call when calls are issued back to back without synchronising (what a
  host-bound step pays);
* ``pipelined_us``: wall time per call of that back-to-back run, synchronised at the end, i.e. about
  ``max(issue, gpu)`` per call.

With ``--cprofile`` it also profiles one patched decode (Python functions by own time), to show where the
host time of the dispatch layer itself goes.

    python benchmarks/host_cost.py --arch gemma2-2b --json h.json --md h.md
    python benchmarks/host_cost.py --quick                                  # CPU smoke test
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import pstats
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from e2e import ARCHS, bench_setup, build_model, versions  # noqa: E402
from result_files import write_result  # noqa: E402

from layerzero.tuning.measure import back_to_back_us  # noqa: E402


def back_to_back(fn: Callable[[], Any], device: str, calls: int = 200, trials: int = 5) -> tuple[float, float]:
    """(issue_us, pipelined_us) per call: medians over ``trials`` runs of ``calls`` unsynchronised calls."""
    for _ in range(9):  # with back_to_back_us's own warm-up call: ten
        fn()
    runs = back_to_back_us(fn, device, calls, trials)
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def kernel_costs(model, ids: torch.Tensor, device: str) -> list[dict[str, Any]]:
    from layerzero.context.call_context import SelectionContext
    from layerzero.tuning.measure import eligible_kernels, measure
    from layerzero_hf.conformance.recording import record_calls

    rows = []
    for call in record_calls(model, ids, decode_steps=1, keep=1):
        if call.phase != "decode":
            continue
        ctx = SelectionContext.from_inputs(call.operation, call.inputs, **call.options)
        specs, _ = eligible_kernels(call.operation, ctx)
        entry: dict[str, Any] = {"call": call.describe()[:160], "count": call.count, "kernels": {}}
        for spec in specs:
            args, impl = spec.map_arguments(call.inputs, call.options), spec.impl
            fn = lambda impl=impl, args=args: impl(**args)  # noqa: E731
            try:
                issue, pipelined = back_to_back(fn, device)
                gpu = measure(fn, device).median_us if device == "cuda" else None
            except Exception as exc:  # noqa: BLE001 - a kernel that cannot take this call is a row, not a crash
                entry["kernels"][spec.kernel_id] = {"error": f"{type(exc).__name__}: {str(exc)[:100]}"}
                continue
            entry["kernels"][spec.kernel_id] = {"issue_us": issue, "pipelined_us": pipelined, "gpu_us": gpu}
        rows.append(entry)
    return rows


def cprofile_decode(model, ids: torch.Tensor, steps: int, top: int = 60) -> dict[str, Any]:
    def run() -> None:
        model.generate(ids, max_new_tokens=steps, min_new_tokens=steps, do_sample=False, pad_token_id=0,
                       eos_token_id=None)
    run()
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    run()
    prof.disable()
    wall = time.perf_counter() - t0
    stats = pstats.Stats(prof)
    rows = []
    for (file, line, name), (cc, nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append({"function": f"{Path(file).name}:{line}:{name}", "calls": nc, "own_ms": tt * 1e3,
                     "cumulative_ms": ct * 1e3})
    rows.sort(key=lambda r: -r["own_ms"])
    return {"wall_ms_under_cprofile": wall * 1e3, "steps": steps, "top": rows[:top]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", choices=sorted(ARCHS), default="gemma2-2b")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--record-layers", type=int, default=2, help="layers of the model whose calls are recorded")
    ap.add_argument("--cprofile", action="store_true", help="also cProfile one patched decode of the full model")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--md", type=Path)
    args = ap.parse_args(argv)
    import layerzero_hf

    device, dtype, config_class, cfg = bench_setup(args.arch, args.quick)
    if args.quick:
        args.batch, args.prompt = 2, 8
    vocab = cfg["vocab_size"]
    ids = torch.randint(3, vocab, (args.batch, args.prompt), device=device)
    small = build_model({**cfg, "num_hidden_layers": args.record_layers}, dtype, device, "layerzero",
                        config_class=config_class)
    result: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "arch": args.arch,
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "versions": versions(),
        "batch": args.batch, "prompt": args.prompt, "calls": kernel_costs(small, ids, device)}
    del small
    if args.cprofile:
        full = build_model(cfg, dtype, device, "sdpa", config_class=config_class)
        result["cprofile_hf_sdpa"] = cprofile_decode(full, ids, 4 if args.quick else 8)
        layerzero_hf.patch(full, attention=True)
        result["cprofile_layerzero"] = cprofile_decode(full, ids, 4 if args.quick else 8)
    md = markdown(result)
    write_result(result, md, args.json, args.md)
    print(md)
    return result


def markdown(result: dict[str, Any]) -> str:
    v = result["versions"]
    lines = [f"# Host cost of decode kernels, {result['arch']} ({result['date']})", "",
             f"Device {result['device']}; torch {v['torch']}, triton {v.get('triton')}; commit {v['git']}; "
             f"batch {result['batch']}, prompt {result['prompt']}.", "",
             "| call | kernel | issue us | pipelined us | GPU us |", "|---|---|---:|---:|---:|"]
    for c in result["calls"]:
        for k, t in c["kernels"].items():
            if "error" in t:
                lines.append(f"| {c['call'][:90]} | {k} | {t['error']} | | |")
            else:
                gpu = f"{t['gpu_us']:.1f}" if t["gpu_us"] is not None else "-"
                lines.append(f"| {c['call'][:90]} | {k} | {t['issue_us']:.1f} | {t['pipelined_us']:.1f} | {gpu} |")
    for name in ("cprofile_hf_sdpa", "cprofile_layerzero"):
        p = result.get(name)
        if p:
            lines += ["", f"## {name}: {p['wall_ms_under_cprofile']:.1f} ms for {p['steps']} steps under cProfile", "",
                      "| function | calls | own ms | cumulative ms |", "|---|---:|---:|---:|"]
            lines += [f"| `{r['function']}` | {r['calls']} | {r['own_ms']:.1f} | {r['cumulative_ms']:.1f} |"
                      for r in p["top"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
