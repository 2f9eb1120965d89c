"""In-context conformance of every eligible kernel on the calls the nine shipped architectures really make.

Each architecture (random weights; tiny head_dim 16 and small head_dim 64 shapes on a GPU) is patched
with ``attention=True`` and recorded through a prefill and a few decode steps with the dynamic cache, a
static cache and a left-padded batch of two (``layerzero_hf.conformance.record_scenarios``). Every
recorded call is then replayed on every kernel the dispatcher finds eligible and compared with the fp32
reference. A kernel that passes its synthetic grid but fails here (e.g. a RoPE kernel on head_dim 16
tables) would give a model wrong logits when a policy picks it.

    python benchmarks/in_context_replay.py --json out.json --md out.md      # GPU: bf16, tiny + small
    python benchmarks/in_context_replay.py --archs llama,gemma2 --dtypes float32

Exit status 1 when any eligible kernel fails a recorded call.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
if not torch.cuda.is_available():  # Triton kernels run on CPU through the interpreter, chosen at import
    os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, str(ROOT / "benchmarks"))

from result_files import git_commit, write_result  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def versions() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    import transformers

    out: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                           "transformers": transformers.__version__}
    for key, dist in (("triton", "triton"), ("flashinfer", "flashinfer-python"), ("liger_kernel", "liger-kernel")):
        try:
            out[key] = version(dist)
        except PackageNotFoundError:
            out[key] = None
    out["git"] = git_commit()
    return out


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return platform.processor() or platform.machine() or "cpu"


def run(args: argparse.Namespace) -> dict[str, Any]:
    import layerzero_hf  # noqa: F401  (registers the "layerzero" attention implementation)
    from layerzero_hf.conformance import replay
    from layerzero_hf.conformance.archs import SMALL, TINY, build_model
    from layerzero_hf.conformance.recording import record_scenarios

    sizes = {"tiny": TINY, "small": SMALL}
    rows: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    timings: dict[str, float] = {}
    total_calls = 0
    for arch in args.archs:
        for size_name in args.sizes:
            for dtype_name in args.dtypes:
                t0 = time.perf_counter()
                model = build_model(arch, sizes[size_name], dtype=DTYPES[dtype_name], device=args.device)
                calls = record_scenarios(model, prompt_len=args.prompt_len, decode_steps=args.decode_steps,
                                         keep=args.keep)
                t1 = time.perf_counter()
                report = replay(calls)
                t2 = time.perf_counter()
                total_calls += report.calls
                timings[f"{arch}/{size_name}/{dtype_name}"] = round(t2 - t0, 2)
                for row in report.summary():
                    rows.append({"arch": arch, "size": size_name, "dtype": dtype_name, **row})
                for r in report.failures:
                    failures.append({"arch": arch, "size": size_name, "dtype": dtype_name, "kernel": r.kernel_id,
                                     "call": r.call, "error": r.error, "max_abs_error": r.max_abs_error})
                print(f"{arch:<12} {size_name:<5} {dtype_name:<8} {report.calls:>3} calls  record {t1 - t0:5.1f}s  "
                      f"replay {t2 - t1:5.1f}s  {'ok' if report.ok else f'{len(report.failures)} FAILED'}",
                      flush=True)
                del model
    return {
        "meta": {"device": args.device, "device_name": device_name(args.device), "dtypes": args.dtypes,
                 "sizes": args.sizes, "prompt_len": args.prompt_len, "decode_steps": args.decode_steps,
                 "keep": args.keep, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                 **versions()},
        "calls": total_calls, "rows": rows, "failures": failures, "seconds": timings,
    }


def table(result: dict[str, Any]) -> list[str]:
    head = ["arch", "size", "dtype", "operation", "kernel", "calls", "result", "max error"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["rows"]:
        verdict = "PASS" if not r["failed"] else f"FAIL ({r['failed']}/{r['calls']})"
        lines.append(f"| {r['arch']} | {r['size']} | {r['dtype']} | {r['operation']} | {r['kernel_id']} | "
                     f"{r['calls']} | {verdict} | {r['max_abs_error']:.3g} |")
    return lines


def markdown(result: dict[str, Any]) -> str:
    m = result["meta"]
    out = [f"# In-context kernel conformance: {m['device_name']} ({m['device']})", "",
           f"{m['date']}; torch {m['torch']}, transformers {m['transformers']}, triton {m['triton']}, "
           f"flashinfer {m['flashinfer']}, liger-kernel {m['liger_kernel']}, commit {m['git']}.", "",
           f"{result['calls']} distinct recorded calls (prefill + {m['decode_steps']} decode steps; dynamic cache, "
           "static cache, left-padded batch of 2), each replayed on every eligible kernel against the fp32 "
           "reference.", ""]
    out += table(result)
    if result["failures"]:
        out += ["", "## Failures", ""]
        out += [f"- {f['arch']}/{f['size']}/{f['dtype']} **{f['kernel']}**: `{f['call']}`: {f['error']}"
                for f in result["failures"]]
    return "\n".join(out) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from layerzero_hf.conformance.archs import ARCHS

    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    p.add_argument("--dtypes", default=None, help="comma list (default: bfloat16 on cuda, bfloat16,float32 on cpu)")
    p.add_argument("--sizes", default=None, help="comma list of tiny,small (default: both on cuda, tiny on cpu)")
    p.add_argument("--archs", default=",".join(ARCHS), help=f"comma list of {', '.join(ARCHS)}")
    p.add_argument("--prompt-len", type=int, default=17, help="> 16 so decode steps share a dispatch bucket")
    p.add_argument("--decode-steps", type=int, default=3)
    p.add_argument("--keep", type=int, default=1, help="calls kept per dispatch signature and phase")
    p.add_argument("--jobs", type=int, default=1,
                   help="replay the architectures in this many processes side by side (their compiles overlap)")
    p.add_argument("--json", type=Path)
    p.add_argument("--md", type=Path)
    args = p.parse_args(argv)
    on_cuda = args.device.startswith("cuda")
    args.dtypes = (args.dtypes or ("bfloat16" if on_cuda else "bfloat16,float32")).split(",")
    args.sizes = (args.sizes or ("tiny,small" if on_cuda else "tiny")).split(",")
    args.archs = args.archs.split(",")
    for name, values, known in (("--dtypes", args.dtypes, DTYPES), ("--sizes", args.sizes, ("tiny", "small")),
                                ("--archs", args.archs, ARCHS)):
        bad = [v for v in values if v not in known]
        if bad:
            p.error(f"{name}: unknown {bad}; choose from {', '.join(known)}")
    return args


def run_in_processes(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    """Split the architectures over ``args.jobs`` child processes of this script and merge their results.
    FlashInfer's JIT, Triton and Flex compiles are mostly single-threaded host work, so on a many-core GPU
    host the replay of nine architectures takes about the time of the slowest group."""
    import tempfile

    groups = [args.archs[i::args.jobs] for i in range(args.jobs) if args.archs[i::args.jobs]]
    passthrough: list[str] = []
    skip = False
    for a in argv:  # drop the options this parent handles itself
        if skip:
            skip = False
            continue
        if a in ("--jobs", "--archs", "--json", "--md"):
            skip = True
            continue
        if a.split("=", 1)[0] in ("--jobs", "--archs", "--json", "--md"):
            continue
        passthrough.append(a)
    with tempfile.TemporaryDirectory() as tmp:
        procs = []
        for i, group in enumerate(groups):
            out = Path(tmp) / f"part{i}.json"
            cmd = [sys.executable, __file__, *passthrough, "--archs", ",".join(group), "--json", str(out)]
            procs.append((subprocess.Popen(cmd), out))
        parts = []
        for proc, out in procs:
            proc.wait()
            if out.exists():
                parts.append(json.loads(out.read_text()))
            else:
                print(f"a replay process ({proc.args[-3]}) wrote no result (exit {proc.returncode})", flush=True)
    if not parts:
        raise SystemExit("no replay process produced a result")
    merged = dict(parts[0])
    for key in ("rows", "failures"):
        merged[key] = [x for part in parts for x in part[key]]
    merged["calls"] = sum(part["calls"] for part in parts)
    merged["seconds"] = {k: v for part in parts for k, v in part["seconds"].items()}
    missing = [a for a in args.archs if not any(k.startswith(a + "/") for k in merged["seconds"])]
    if missing:
        merged["failures"].append({"arch": ",".join(missing), "size": "-", "dtype": "-", "kernel": "-",
                                   "call": "-", "error": "replay process did not finish", "max_abs_error": None})
    return merged


def main(argv: list[str] | None = None) -> dict[str, Any]:
    raw = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(raw)
    result = run_in_processes(args, raw) if args.jobs > 1 else run(args)
    print()
    print("\n".join(table(result)))
    for f in result["failures"]:
        print(f"FAIL {f['arch']}/{f['size']}/{f['dtype']} {f['kernel']}: {f['call']}: {f['error']}")
    write_result(result, markdown(result), args.json, args.md)
    return result


if __name__ == "__main__":
    sys.exit(1 if main()["failures"] else 0)
