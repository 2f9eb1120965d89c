"""``layerzero tune``: fill the autotune cache (no subcommand), measure cost tables (``tune costs``) or
tune one saved model on its own calls (``tune model``).

``layerzero tune`` with options and no subcommand keeps its meaning (the shape grid of
:func:`layerzero.cli.bench.tune`); the subcommands are the measured-selection tools:

* ``layerzero tune costs --out DIR [--quick] [--max-seconds S] [--operations OP] [--arch ARCH]`` runs the
  cost sweep (:mod:`layerzero.tuning.cost_sweep`) and writes ``DIR/<device_class>.json`` and ``.md``;
* ``layerzero tune model PATH --tokens N`` loads a saved Transformers model and runs
  :func:`layerzero_hf.tune` on a random prompt of N tokens; the times land in the local autotune cache.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from layerzero.cli.bench import tune as tune_shapes
from layerzero.cli.common import check_device, check_dtype, console, esc, print_json, usage

tune_app = typer.Typer(
    name="tune",
    invoke_without_command=True,
    help="Fill the autotune cache for a shape grid (no subcommand), measure cost tables (costs), or tune a "
         "saved model on its own calls (model).",
)


def _grid(ctx: typer.Context, **options: Any) -> None:
    if ctx.invoked_subcommand is None:
        tune_shapes(**options)


# The grid command's options stay those of ``layerzero.cli.bench.tune`` (one definition, not a copy).
_grid.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context),
     *inspect.signature(tune_shapes, eval_str=True).parameters.values()])
_grid.__doc__ = tune_shapes.__doc__
tune_app.callback()(_grid)


@tune_app.command("costs")
def costs(
    out: Annotated[Path, typer.Option("--out", help="Directory for <device_class>.json and .md.")],
    device: Annotated[Optional[str], typer.Option(help="cpu | cuda | cuda:N (default: cuda when present).")] = None,
    arch: Annotated[Optional[list[str]], typer.Option("--arch", help="Architectures (globs, repeatable).")] = None,
    operations: Annotated[Optional[list[str]], typer.Option("--operations", help="Operations (globs, "
                                                                                 "repeatable).")] = None,
    dtype: Annotated[Optional[str], typer.Option(help="Default: bfloat16 on CUDA, float32 on CPU.")] = None,
    max_seconds: Annotated[float, typer.Option("--max-seconds", help="Stop starting buckets after this.")] = 300.0,
    max_tokens: Annotated[Optional[int], typer.Option(
        "--max-tokens", min=1, help="Only buckets of at most this many tokens (64: the host-bound decode-sized calls).")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="One architecture, two token counts (CI, CPU).")] = False,
    into_cache: Annotated[bool, typer.Option("--into-cache", help="Also record as local measurements.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Measure every eligible kernel at the calls the shipped architectures make; write a cost table."""
    from layerzero.tuning.cache import TuningCache
    from layerzero.tuning.cost_sweep import run_sweep

    dev = check_device("--device", device, need_present=True)
    dt = check_dtype("--dtype", dtype)
    if out.exists() and not out.is_dir():
        usage(f"--out {out} is a file; pass a directory (the table is written as <device_class>.json in it)")
    try:
        result = run_sweep(out, device=dev, archs=arch, operations=operations, dtype=dt, quick=quick,
                           max_seconds=max_seconds, max_tokens=max_tokens,
                           into_cache=TuningCache() if into_cache else None)
    except ValueError as e:
        usage(str(e))
    summary = {"device_class": result.table.device_class, "json": str(result.json_path),
               "summary": str(result.summary_path), "buckets": result.buckets_done,
               "buckets_planned": result.buckets_total, "measurements": len(result.table)}
    if json_out:
        print_json(summary)
        return
    con = console()
    con.print(f"cost table {esc(summary['json'])}: {summary['measurements']} measurements in "
              f"{summary['buckets']} of {summary['buckets_planned']} buckets; summary {esc(summary['summary'])}")


@tune_app.command("model")
def model(
    path: Annotated[Path, typer.Argument(help="Directory of a model saved with save_pretrained.")],
    tokens: Annotated[int, typer.Option("--tokens", min=1, help="Prompt length to tune for.")] = 128,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Prompts per batch.")] = 1,
    decode_steps: Annotated[int, typer.Option("--decode-steps", min=0, help="Decode steps to record.")] = 1,
    device: Annotated[Optional[str], typer.Option(help="cpu | cuda | cuda:N (default: cuda when present).")] = None,
    dtype: Annotated[Optional[str], typer.Option(help="Load the weights in this dtype.")] = None,
    cache: Annotated[Optional[Path], typer.Option(help="Autotune cache file (default: the per-user cache).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Tune a saved model on its own calls: time every eligible kernel at each distinct call, keep the times."""
    import torch

    dev = check_device("--device", device, need_present=True) or ("cuda" if torch.cuda.is_available() else "cpu")
    dt = check_dtype("--dtype", dtype)
    if not path.is_dir():
        usage(f"PATH {path} is not a directory; pass a directory written by save_pretrained")
    if cache is not None and cache.is_dir():
        usage(f"--cache {cache} is a directory; pass a file path such as {cache / 'autotune.json'}")
    try:
        import transformers

        import layerzero_hf
    except ImportError as e:
        usage(f"tune model needs the Transformers integration: pip install 'layerzero-dispatch[hf]' ({e})")
    kwargs: dict[str, Any] = {"dtype": getattr(torch, dt)} if dt else {}
    lm = transformers.AutoModelForCausalLM.from_pretrained(str(path), **kwargs).to(dev).eval()
    vocab = int(lm.config.vocab_size)
    ids = torch.randint(min(3, vocab - 1), vocab, (batch, tokens), generator=torch.Generator().manual_seed(0))
    result = layerzero_hf.tune(lm, ids, decode_steps=decode_steps, cache=str(cache) if cache else None)
    rows = [{"bucket": c.bucket.label(), "calls": c.count, "fastest": c.fastest, "times_us": c.times_us,
             "notes": c.notes} for c in result.calls]
    if json_out:
        print_json({"model_key": result.model_key, "device_class": result.device_class,
                    "cache": result.cache_path, "calls": rows})
        return
    t = Table(title=f"layerzero tune model {esc(str(path))} ({result.model_key}, {result.device_class})")
    for col in ("call bucket", "calls", "fastest", "times (us)"):
        t.add_column(col)
    for r in rows:
        times = ", ".join(f"{k} {v:.1f}" for k, v in sorted(r["times_us"].items(), key=lambda kv: kv[1]))
        t.add_row(esc(r["bucket"]), str(r["calls"]), r["fastest"] or "-", esc(times) or "-")
    con = console()
    con.print(t)
    con.print(f"cache: {esc(result.cache_path)}")
