"""Which of LayerZero's operations to trace into a ``torch.compile`` graph and which to keep as custom ops.

Why: under ``torch.compile`` each of norms, RoPE and the gated activations is either traced as its plain-torch
kernel, so Inductor generates and fuses its own code ("inline"), or kept as a ``layerzero::*`` custom op that
runs the kernel the dispatcher picked, e.g. LayerZero's Triton RoPE ("opaque";
:mod:`layerzero.ops.compile_strategy`). Which is faster depends on what Inductor makes of each operation and its
neighbours, so this measures it per operation: the patched model compiled with every operation inline, with
every one opaque, and with one operation at a time opaque, each against the same model's eager LayerZero run in
alternating rounds (same process, same weights, static shapes; prefill ``use_cache=False, logits_to_keep=1``).
HF sdpa compiled is measured the same way, so every mix also reads against it. Each compiled mix's logits are
compared with eager LayerZero's.

    python benchmarks/compile_strategies.py --arch llama-1b --json out.json --md out.md   # GPU (bf16)
    python benchmarks/compile_strategies.py --quick --json q.json                         # CPU smoke test
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from e2e import ARCHS, bench_setup, build_model, time_fn, token_ids, versions  # noqa: E402
from result_files import write_result  # noqa: E402

from layerzero import ops  # noqa: E402
from layerzero.ops.compile_strategy import INLINABLE  # noqa: E402

DEFAULT_MIXES = "inline,opaque,opaque:rms_norm,opaque:rope,opaque:swiglu"


def parse_mix(text: str) -> tuple[str, list[str]]:
    """``inline`` / ``opaque`` (every operation) or ``opaque:<op>[+<op>]`` (those opaque, the rest inline)."""
    if text in ("inline", "opaque"):
        return text, []
    kind, _, names = text.partition(":")
    ops_named = [n for n in names.split("+") if n]
    if kind != "opaque" or not ops_named or any(n not in INLINABLE for n in ops_named):
        raise SystemExit(f"--mixes: {text!r} is not 'inline', 'opaque' or 'opaque:<op>[+<op>]' with ops from "
                         f"{', '.join(INLINABLE)}")
    return text, ops_named


def strategy_block(mix: str, opaque_ops: list[str]) -> ExitStack:
    """A ``with`` block under which ``torch.compile`` traces ``mix``."""
    stack = ExitStack()
    stack.enter_context(ops.compile_strategy_set_to("opaque" if mix == "opaque" else "inline"))
    if opaque_ops:
        stack.enter_context(ops.compile_strategy_set_to("opaque", opaque_ops))
    return stack


def alternate(first: Callable[[], Any], second: Callable[[], Any], device: str, rounds: int, repeats: int
              ) -> dict[str, Any]:
    """Median ms of each and the median of per-round ratios first/second (> 1: ``second`` is faster)."""
    a_ms, b_ms, ratios = [], [], []
    for _ in range(rounds):
        a = time_fn(first, device, 1, repeats) * 1e3
        b = time_fn(second, device, 1, repeats) * 1e3
        a_ms.append(a)
        b_ms.append(b)
        ratios.append(a / b)
    return {"first_ms": statistics.median(a_ms), "second_ms": statistics.median(b_ms),
            "speedup": statistics.median(ratios), "range": [min(ratios), max(ratios)]}


def run(args: argparse.Namespace) -> dict[str, Any]:
    import layerzero_hf

    device, dtype, config_class, cfg = bench_setup(args.arch, args.quick)
    shapes = [(1, 32)] if args.quick else [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")]
    rounds, repeats = (1, 1) if args.quick else (args.rounds, args.repeats)
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    model = build_model(cfg, dtype, device, "sdpa", config_class=config_class)
    result: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "arch": args.arch,
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "dtype": str(dtype).removeprefix("torch."),
        "versions": versions(), "rounds": rounds, "repeats": repeats, "shapes": {}}
    compiled_hf = {}
    for b, s in shapes:  # HF sdpa eager vs compiled, before the patch (the compiled form kept for the ratios)
        ids = token_ids(cfg["vocab_size"], (b, s), device)
        compiled = torch.compile(model)

        def eager_hf(ids=ids):
            with torch.no_grad():
                model(ids, use_cache=False, logits_to_keep=1)

        def comp_hf(ids=ids, compiled=compiled):
            with torch.no_grad():
                compiled(ids, use_cache=False, logits_to_keep=1)

        compiled_hf[(b, s)] = alternate(eager_hf, comp_hf, device, rounds, repeats)
    torch._dynamo.reset()
    layerzero_hf.patch(model, attention=True)
    for b, s in shapes:
        ids = token_ids(cfg["vocab_size"], (b, s), device)
        with torch.no_grad():
            eager_logits = model(ids, use_cache=False, logits_to_keep=1).logits.float()
        cell: dict[str, Any] = {"hf_sdpa_compiled_vs_hf_eager": compiled_hf[(b, s)], "mixes": {}}
        result["shapes"][f"{b}x{s}"] = cell

        def eager_lz(ids=ids):
            with torch.no_grad():
                model(ids, use_cache=False, logits_to_keep=1)

        for text in args.mixes.split(","):
            mix, opaque_ops = parse_mix(text)
            torch._dynamo.reset()
            with strategy_block(mix, opaque_ops):
                compiled = torch.compile(model)

                def comp_lz(ids=ids, compiled=compiled):
                    with torch.no_grad():
                        compiled(ids, use_cache=False, logits_to_keep=1)

                entry = alternate(eager_lz, comp_lz, device, rounds, repeats)
                with torch.no_grad():
                    logits = compiled(ids, use_cache=False, logits_to_keep=1).logits.float()
                entry["strategies"] = ops.compile_strategy()
            entry["max_abs_diff_vs_eager"] = (logits - eager_logits).abs().max().item()
            # eager LayerZero / compiled HF sdpa (from their own rounds) times compiled mix / eager LayerZero
            hf = compiled_hf[(b, s)]
            entry["vs_compiled_hf_sdpa"] = hf["second_ms"] / entry["second_ms"]
            cell["mixes"][mix] = entry
            print(f"[{b}x{s} {mix}] {json.dumps(entry)}", flush=True)
    torch._dynamo.reset()
    return result


def markdown(result: dict[str, Any]) -> str:
    v = result["versions"]
    lines = [f"# Compile strategies per operation, {result['arch']} ({result['date']})", "",
             f"Device: {result['device']}; dtype {result['dtype']}; torch {v['torch']}, transformers {v['transformers']}, "
             f"triton {v.get('triton')}; commit {v.get('git')}. Prefill `use_cache=False, logits_to_keep=1`; "
             f"{result['rounds']} rounds alternating eager LayerZero and the compiled mix, {result['repeats']} timed "
             "calls each; speed-up = median of per-round ratios (range beside it).", ""]
    for shape, cell in result["shapes"].items():
        hf = cell["hf_sdpa_compiled_vs_hf_eager"]
        lines += [f"## {shape}", "", f"HF sdpa: eager {hf['first_ms']:.2f} ms, compiled {hf['second_ms']:.2f} ms "
                  f"({hf['speedup']:.2f}x).", "",
                  "| mix (opaque operations) | compiled ms | eager LayerZero ms | compiled vs eager LayerZero | "
                  "vs compiled HF sdpa | max abs diff vs eager |", "|---|---:|---:|---:|---:|---:|"]
        for mix, e in cell["mixes"].items():
            lines.append(f"| {mix} | {e['second_ms']:.2f} | {e['first_ms']:.2f} | {e['speedup']:.3f}x "
                         f"({e['range'][0]:.3f}-{e['range'][1]:.3f}) | {e['vs_compiled_hf_sdpa']:.3f}x | "
                         f"{e['max_abs_diff_vs_eager']:.4f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", choices=sorted(ARCHS), default="llama-1b")
    ap.add_argument("--shapes", default="8x1024", help="batch x seq, comma-separated")
    ap.add_argument("--mixes", default=DEFAULT_MIXES, help="comma-separated: inline, opaque, opaque:<op>[+<op>]")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=5, help="timed prefills per variant per round")
    ap.add_argument("--quick", action="store_true", help="CPU smoke test on a tiny config")
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
