"""The ``layerzero`` command: doctor, kernels, explain, validate, bench, tune.

Every command prints a readable rich table by default and machine-readable JSON with ``--json`` (bench
and tune also write files with ``--out``). Exit codes: 0 success; 1 the command ran but found a problem
(invalid policy, no kernel can run the described call); 2 bad arguments or unreadable input files.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    name="layerzero",
    help="LayerZero: see which kernel runs each operation on this machine, and why.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EXIT_PROBLEM = 1
EXIT_USAGE = 2


def _console() -> Console:
    # Tables are wide (kernel ids, reasons): when output is not a terminal (pipes, CliRunner, CI logs)
    # use a wide fixed width so ids are never cut or folded.
    width = None if sys.stdout.isatty() else int(os.environ.get("COLUMNS", "0") or 0) or 200
    return Console(width=width, highlight=False, soft_wrap=False)


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, float) and math.isnan(value):
        return None
    return str(value)


def _clean_nans(value: Any) -> Any:
    """JSON has no NaN: missing measurements become null."""
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {k: _clean_nans(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean_nans(v) for v in value]
    return value


def _fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _yes_no(flag: bool) -> str:
    return "[green]yes[/green]" if flag else "[red]no[/red]"


def _esc(text: Any) -> str:
    from rich.markup import escape

    return escape(str(text)) if text is not None else ""


# ============================================================================================== doctor
@app.command()
def doctor(
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Check the environment: torch/CUDA/device, and each backend (installed, version, usable here, why not)."""
    from layerzero.cli.doctor import backend_rows, default_choices, environment

    env = environment()
    backends = backend_rows()
    device = "cuda" if env["cuda_available"] else "cpu"
    try:
        choices = default_choices(device)
    except Exception as e:  # noqa: BLE001 - e.g. an invalid $LAYERZERO_POLICY: still show the rest
        choices = [{"shape": "(default grid)", "chosen": None, "usable": 0, "candidates": 0, "error": str(e)}]
    if json_out:
        _print_json({"environment": env, "backends": backends, "default_choices": choices})
        return
    console = _console()
    t = Table(title="Environment", show_header=False)
    t.add_column("fact", style="bold")
    t.add_column("value")
    for key, value in env.items():
        if key == "devices":
            continue
        t.add_row(key, _esc(value if value is not None else "-"))
    if env["devices"]:
        for d in env["devices"]:
            t.add_row(f"cuda:{d['index']}", f"{d['name']} (sm {d['capability']}, {d['memory_gib']} GiB)")
    else:
        t.add_row("devices", "no CUDA device: GPU-only kernels are rejected (see `layerzero explain`)")
    console.print(t)
    b = Table(title="Backends")
    for col in ("backend", "installed", "version", f"usable on {device}", "why not"):
        b.add_column(col, overflow="fold" if col == "why not" else "ellipsis")
    for row in backends:
        b.add_row(row["backend"], _yes_no(row["installed"]), row["version"] or "-", _yes_no(row["usable"]),
                  _esc(row["reason"] or ""))
    console.print(b)
    c = Table(title=f"Policy choices on {device} ($LAYERZERO_POLICY or the default policy)")
    for col in ("call", "chosen kernel", "runnable"):
        c.add_column(col)
    for row in choices:
        chosen = row["chosen"] or f"[red]none[/red] {_esc(row.get('error', ''))}"
        c.add_row(_esc(row["shape"]), chosen, f"{row['usable']}/{row['candidates']}")
    console.print(c)


# ============================================================================================== kernels
def _constraint_summary(spec: Any) -> str:
    """The constraints that matter when choosing, in a few words."""
    c = spec.constraints
    parts = []
    if c.platforms:
        parts.append("/".join(sorted(c.platforms)))
    if c.dtypes:
        short = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32", "float64": "fp64"}
        parts.append(",".join(short.get(d, d) for d in sorted(c.dtypes)))
    if c.min_compute_capability:
        parts.append(f"sm>={c.min_compute_capability[0]}{c.min_compute_capability[1]}")
    if c.max_compute_capability:
        parts.append(f"sm<={c.max_compute_capability[0]}{c.max_compute_capability[1]}")
    if c.head_dims:
        parts.append("d in {" + ",".join(str(d) for d in sorted(c.head_dims)) + "}")
    if c.max_head_dim:
        parts.append(f"d<={c.max_head_dim}")
    if c.head_dim_multiple:
        parts.append(f"d%{c.head_dim_multiple}==0")
    if c.max_seq_len:
        parts.append(f"seq<={c.max_seq_len}")
    if any(spec.serves(op) for op in ("attention.causal", "attention.decode")):
        feats = [name for name, ok in (("softcap", c.supports_softcap), ("window", c.supports_sliding_window),
                                       ("sinks", c.supports_sinks)) if ok]
        lacks = [name for name, ok in (("gqa", c.supports_gqa), ("bool mask", c.supports_bool_mask),
                                       ("additive mask", c.supports_additive_mask),
                                       ("non-causal", c.supports_non_causal)) if not ok]
        if feats:
            parts.append("+" + "+".join(feats))
        if lacks:
            parts.append("no " + ", no ".join(lacks))
    if not c.supports_grad:
        parts.append("no grad")
    if c.requires_contiguous:
        parts.append("contiguous")
    if c.custom:
        parts.append(f"{len(c.custom)} custom check{'s' if len(c.custom) > 1 else ''}")
    return "; ".join(parts) or "any"


@app.command()
def kernels(
    op: Annotated[Optional[str], typer.Option("--op", help="Only kernels serving this operation (glob ok).")] = None,
    backend: Annotated[Optional[str], typer.Option("--backend", help="Only kernels of this backend.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """The kernel catalogue: ids, operations, backend, priority, constraints, and whether it can run here."""
    from layerzero.operations import OPERATIONS, expand
    from layerzero.registry import get_global_backend_registry, get_global_kernel_registry

    registry = get_global_kernel_registry()
    backends = get_global_backend_registry()
    if backend is not None and backend not in backends:
        known = ", ".join(sorted(b.backend_id for b in backends.all()))
        raise _fail(f"--backend {backend!r} is not a known backend; use one of {known}")
    wanted_ops = None
    if op is not None:
        wanted_ops = expand(op)
        if not wanted_ops:
            raise _fail(f"--op {op!r} matches no operation; use one of {', '.join(OPERATIONS)} (globs allowed)")
    specs = [s for s in registry.all()
             if (backend is None or s.backend == backend)
             and (wanted_ops is None or any(s.serves(o) for o in wanted_ops))]
    specs.sort(key=lambda s: (s.operations[0], -s.priority, s.kernel_id))
    if json_out:
        out = []
        for s in specs:
            d = s.describe()
            status = backends.status(s.backend)
            d["backend_available"] = status.available
            d["backend_reason"] = status.reason
            d["constraints_summary"] = _constraint_summary(s)
            out.append(d)
        _print_json(out)
        return
    t = Table(title=f"LayerZero kernels ({len(specs)})")
    for col in ("kernel", "operations", "backend", "prio", "constraints", "backend ok", "aliases"):
        t.add_column(col, overflow="fold" if col == "constraints" else "ellipsis", no_wrap=col == "kernel")
    for s in specs:
        t.add_row(s.kernel_id, ", ".join(s.operations), s.backend, str(s.priority), _esc(_constraint_summary(s)),
                  _yes_no(backends.is_available(s.backend)), ", ".join(s.aliases))
    _console().print(t)


# ============================================================================================== explain
def _load_policy_or_exit(path: Optional[Path]) -> Any:
    from layerzero.errors import ConfigValidationError
    from layerzero.policy import default_policy_path, load_policy

    source = str(path) if path is not None else os.environ.get("LAYERZERO_POLICY") or default_policy_path()
    if source is None:
        from layerzero.policy import Policy

        return Policy.empty(), "(built-in priorities)"
    try:
        return load_policy(str(source)), str(source)
    except ConfigValidationError as e:
        for p in e.problems:
            typer.echo(f"  {p.field}: {p.message} (got {p.value!r})", err=True)
        raise _fail(f"policy {source} is invalid ({len(e.problems)} problem(s)); run `layerzero validate "
                    f"{source}`") from None


def _explain_dispatcher(policy: Any) -> Any:
    from layerzero.dispatch.dynamic import DynamicDispatcher
    from layerzero.dispatch.types import DispatchConfig

    return DynamicDispatcher(DispatchConfig(enable_telemetry=False, circuit_breaker_enabled=False), policy=policy)


def _parse_capability(text: Optional[str]) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        major, _, minor = text.partition(".")
        return int(major), int(minor or 0)
    except ValueError:
        raise _fail(f"--capability {text!r}: expected MAJOR.MINOR, e.g. 9.0 for H100") from None


@app.command()
def explain(
    operation: Annotated[str, typer.Argument(help="Operation: attention.causal|prefill|cross|decode, rms_norm, "
                                                  "layer_norm, rope, swiglu, geglu.")],
    batch: Annotated[Optional[int], typer.Option(help="Batch size.")] = None,
    seq: Annotated[Optional[int], typer.Option(help="Query sequence length.")] = None,
    seq_k: Annotated[Optional[int], typer.Option("--seq-k", help="Key/value length (default: --seq).")] = None,
    heads: Annotated[Optional[int], typer.Option(help="Query heads.")] = None,
    kv_heads: Annotated[Optional[int], typer.Option("--kv-heads", help="Key/value heads (GQA).")] = None,
    head_dim: Annotated[Optional[int], typer.Option("--head-dim", help="Head dimension.")] = None,
    head_dim_v: Annotated[Optional[int], typer.Option("--head-dim-v", help="Value head dim (default head-dim).")] = None,
    hidden: Annotated[Optional[int], typer.Option(help="Hidden size (norms, activations).")] = None,
    tokens: Annotated[Optional[int], typer.Option(help="Rows (tokens) for norms/activations.")] = None,
    dtype: Annotated[str, typer.Option(help="float16 | bfloat16 | float32 | float64.")] = "float16",
    device: Annotated[str, typer.Option(help="cpu | cuda | cuda:N.")] = "cuda",
    capability: Annotated[Optional[str], typer.Option(
        help="Compute capability to assume (e.g. 9.0); default: the real device's, when present.")] = None,
    causal: Annotated[Optional[bool], typer.Option("--causal/--no-causal",
                                                   help="Default: causal for attention.causal/prefill.")] = None,
    mask: Annotated[Optional[str], typer.Option(help="Attention mask kind: bool | additive.")] = None,
    window: Annotated[Optional[int], typer.Option(help="Sliding window.")] = None,
    softcap: Annotated[Optional[float], typer.Option(help="Logit softcap.")] = None,
    sinks: Annotated[bool, typer.Option(help="Attention sinks (gpt-oss).")] = False,
    dropout: Annotated[float, typer.Option(help="Dropout probability.")] = 0.0,
    rotary_dim: Annotated[Optional[int], typer.Option("--rotary-dim", help="RoPE: rotated dims (partial).")] = None,
    interleaved: Annotated[bool, typer.Option(help="RoPE: interleaved pairs (GPT-J).")] = False,
    layout: Annotated[Optional[str], typer.Option(help="RoPE layout: bhsd | bshd.")] = None,
    casting: Annotated[Optional[str], typer.Option(help="RMSNorm casting: llama | gemma | none.")] = None,
    offset: Annotated[float, typer.Option(help="RMSNorm weight offset (Gemma: 1.0).")] = 0.0,
    residual: Annotated[bool, typer.Option(help="RMSNorm with fused residual add.")] = False,
    grad: Annotated[bool, typer.Option(help="The call needs gradients.")] = False,
    policy: Annotated[Optional[Path], typer.Option(help="Policy YAML (default: $LAYERZERO_POLICY or the shipped "
                                                        "default policy).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Which kernel runs OPERATION for the described call, and why every other candidate did or did not."""
    from layerzero.operations import OPERATIONS, is_attention
    from layerzero.selection.context import SelectionContext, default_is_causal, device_capability, dtype_name

    if operation not in OPERATIONS:
        raise _fail(f"operation {operation!r} is unknown; use one of {', '.join(OPERATIONS)}")
    dt = dtype_name(dtype)
    if dt not in ("float16", "bfloat16", "float32", "float64"):
        raise _fail(f"--dtype {dtype!r}: use float16, bfloat16, float32 or float64")
    if mask is not None and mask not in ("bool", "additive"):
        raise _fail(f"--mask {mask!r}: use bool or additive")
    if layout is not None and layout not in ("bhsd", "bshd"):
        raise _fail(f"--layout {layout!r}: use bhsd or bshd")
    if casting is not None and casting not in ("llama", "gemma", "none"):
        raise _fail(f"--casting {casting!r}: use llama, gemma or none")
    cc = _parse_capability(capability)
    if cc is None:
        cc = device_capability(device)
    pol, source = _load_policy_or_exit(policy)
    facts: dict[str, Any] = dict(operation=operation, dtype=dt, device=device, compute_capability=cc,
                                 requires_grad=grad)
    if is_attention(operation):
        facts.update(batch_size=batch, seq_len_q=seq, seq_len_k=seq_k, num_heads=heads, num_kv_heads=kv_heads,
                     head_dim=head_dim, head_dim_v=head_dim_v,
                     is_causal=default_is_causal(operation) if causal is None else causal,
                     attn_mask=mask, sliding_window=window, softcap=softcap, has_sinks=sinks, dropout_p=dropout)
    elif operation == "rope":
        facts.update(batch_size=batch, seq_len=seq, num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim,
                     rotary_dim=rotary_dim if rotary_dim is not None else head_dim, interleaved=interleaved,
                     layout=layout or "bhsd")
    else:
        facts.update(batch_size=tokens if tokens is not None else batch, hidden_size=hidden)
        if operation == "rms_norm":
            facts.update(casting=casting or "llama", norm_offset=offset, fused_residual=residual)
    ctx = SelectionContext(**facts)
    exp = _explain_dispatcher(pol).explain(operation, ctx)
    notes = list(exp.notes)
    if device.startswith("cuda") and cc is None:
        notes.append("no CUDA device here and no --capability: compute-capability limits were not checked")
    if json_out:
        data = exp.as_dict()
        data["policy"] = source
        data["notes"] = notes
        _print_json(data)
    else:
        _render_explanation(exp, source, notes)
    if exp.chosen is None:
        raise typer.Exit(EXIT_PROBLEM)


def _render_explanation(exp: Any, source: str, notes: list[str]) -> None:
    console = _console()
    ctx = {k: v for k, v in exp.context.as_dict().items() if v not in (None, False, 0.0, ()) and k != "operation"}
    console.print(f"[bold]{exp.operation}[/bold]  " + _esc(", ".join(f"{k}={v}" for k, v in ctx.items())))
    console.print(f"policy: {_esc(source)}")
    if exp.chosen:
        console.print(f"chosen: [bold green]{exp.chosen}[/bold green]")
    else:
        console.print("chosen: [bold red]none: no kernel can run this call[/bold red]")
    t = Table()
    for col in ("#", "kernel", "backend", "prio", "status", "reason"):
        t.add_column(col, overflow="fold" if col == "reason" else "ellipsis", no_wrap=col == "kernel")
    style = {"chosen": "bold green", "eligible": "cyan", "rejected": "red"}
    for c in exp.candidates:
        t.add_row("" if c.rank is None else str(c.rank + 1), c.kernel_id, c.backend, str(c.priority),
                  f"[{style[c.status]}]{c.status}[/{style[c.status]}]", _esc("; ".join(c.reasons)))
    console.print(t)
    if exp.fallback_order:
        console.print("fallback order: " + " -> ".join(exp.fallback_order))
    for n in notes:
        console.print(f"note: {_esc(n)}")


# ============================================================================================== validate
@app.command()
def validate(
    config: Annotated[Path, typer.Argument(help="Policy YAML file to lint.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Lint a policy file: exit 0 and "OK" when valid, else exit 1 listing every problem (field, value, fix)."""
    from layerzero.errors import ConfigValidationError
    from layerzero.policy import load_policy

    try:
        pol = load_policy(str(config))
    except ConfigValidationError as e:
        problems = list(e.problems)
        if json_out:
            _print_json({"valid": False, "file": str(config),
                         "problems": [{"field": p.field, "value": p.value, "message": p.message} for p in problems]})
        else:
            typer.echo(f"INVALID: {config}: {len(problems)} problem(s)")
            for p in problems:
                typer.echo(f"  {p.field}: {p.message} (got {p.value!r})")
        raise typer.Exit(EXIT_PROBLEM) from None
    summary = _policy_summary(pol)
    if json_out:
        _print_json({"valid": True, "file": str(config), "summary": summary})
    else:
        typer.echo(f"OK: {config} ({', '.join(f'{v} {k}' for k, v in summary.items())})")
        for w in getattr(pol, "warnings", ()):
            typer.echo(f"  warning: {w}")


def _policy_summary(pol: Any) -> dict[str, int]:
    out = {}
    for name in ("rules", "locks", "denies", "allows", "fallback_chains"):
        value = getattr(pol, name, None)
        if value is not None:
            try:
                out[name] = len(value)
            except TypeError:
                continue
    return out


# ============================================================================================== bench / tune
def _shapes(shapes_file: Optional[Path], ops: Optional[list[str]], device: str, dtype: Optional[str]) -> list[Any]:
    from layerzero.tuning.shapes import default_shapes, load_shapes
    from layerzero.errors import ConfigValidationError
    from layerzero.operations import matches

    if shapes_file is not None:
        try:
            shapes = load_shapes(shapes_file, default_dtype=dtype)
        except ConfigValidationError as e:
            for p in e.problems:
                typer.echo(f"  {p.field}: {p.message} (got {p.value!r})", err=True)
            raise _fail(f"shapes file {shapes_file} is invalid") from None
    else:
        shapes = default_shapes(device)
        if dtype is not None:
            import dataclasses

            shapes = [dataclasses.replace(s, dtype=dtype) for s in shapes]
    if ops:
        shapes = [s for s in shapes if any(matches(o, s.operation) for o in ops)]
        if not shapes:
            raise _fail(f"--op {', '.join(ops)} selects none of the shapes")
    return shapes


def _device_or_exit(device: Optional[str]) -> str:
    import torch

    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dev.startswith("cuda") and not torch.cuda.is_available():
        raise _fail(f"--device {dev}: no CUDA device here (torch.cuda.is_available() is False); use --device cpu")
    return dev


def _markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [f"# LayerZero kernel benchmark", "",
             f"device: {meta['device']} ({meta.get('device_name') or 'cpu'}), torch {meta['torch']}, "
             f"layerzero {meta['layerzero']}, repeats {meta['repeats']}", ""]
    by_shape: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        by_shape.setdefault((r["operation"], r["shape"]), []).append(r)
    for (op, shape), group in by_shape.items():
        lines += [f"## {op}: {shape}", "",
                  "| kernel | backend | status | median us | p10 us | p90 us | vs torch | vs reference | max error |",
                  "|---|---|---|---:|---:|---:|---:|---:|---:|"]
        for r in group:
            lines.append(
                f"| {r['kernel_id']}{' **(chosen)**' if r['chosen'] else ''} | {r['backend']} | {r['status']} | "
                f"{_num(r['median_us'], '.1f')} | {_num(r['p10_us'], '.1f')} | {_num(r['p90_us'], '.1f')} | "
                f"{_num(r['speedup_vs_torch'], '.2f', 'x')} | {_num(r['speedup_vs_reference'], '.2f', 'x')} | "
                f"{_num(r['max_error'], '.2e')}{'' if r['ok'] else ' ' + str(r['error'] or 'failed')} |")
        lines.append("")
    return "\n".join(lines)


def _num(value: Any, fmt: str, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:{fmt}}{suffix}"


@app.command()
def bench(
    shapes: Annotated[Optional[Path], typer.Option("--shapes", help="YAML/JSON list of shapes (default: a small "
                                                                     "grid for the device).")] = None,
    op: Annotated[Optional[list[str]], typer.Option("--op", help="Only these operations (repeatable, globs).")] = None,
    kernel: Annotated[Optional[list[str]], typer.Option("--kernel", help="Only these kernels (repeatable); default: "
                                                                         "every kernel selection finds eligible.")] = None,
    device: Annotated[Optional[str], typer.Option(help="cpu | cuda | cuda:N (default: cuda when present).")] = None,
    dtype: Annotated[Optional[str], typer.Option(help="Override the shapes' dtype.")] = None,
    repeats: Annotated[int, typer.Option(min=1, help="Timed calls per kernel.")] = 20,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed calls first.")] = 3,
    policy: Annotated[Optional[Path], typer.Option(help="Policy deciding the chosen kernel.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Write results: .json or .md (markdown).")] = None,
    fmt: Annotated[Optional[str], typer.Option("--format", help="json | markdown (default: from --out).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON to stdout.")] = False,
    progress: Annotated[bool, typer.Option(help="Progress bar.")] = True,
) -> None:
    """Time every eligible kernel on each shape (median/p10/p90, speedups, max error vs fp32 reference)."""
    import torch

    import layerzero
    from layerzero.tuning.kernel_compare import call_from_shape, measure_calls
    from layerzero.dispatch import create_orchestrator
    from layerzero.dispatch.types import DispatchConfig
    from layerzero.errors import KernelNotFoundError

    if fmt is not None and fmt not in ("json", "markdown", "md"):
        raise _fail(f"--format {fmt!r}: use json or markdown")
    dev = _device_or_exit(device)
    shape_list = _shapes(shapes, op, dev, dtype)
    pol, source = _load_policy_or_exit(policy)
    orchestrator = create_orchestrator(DispatchConfig(enable_telemetry=False), policy=pol)
    if kernel:
        for k in kernel:
            try:
                orchestrator.kernel_registry.get(k)
            except KernelNotFoundError as e:
                raise _fail(f"--kernel: {e}") from None
    calls = [call_from_shape(s, torch.device(dev)) for s in shape_list]
    rows = measure_calls(calls, orchestrator, kernels=kernel, warmup=warmup, repeats=repeats, progress=progress,
                         desc="layerzero bench")
    meta = {"device": dev, "device_name": torch.cuda.get_device_name(dev) if dev.startswith("cuda") else None,
            "torch": torch.__version__, "layerzero": layerzero.__version__, "repeats": repeats, "warmup": warmup,
            "policy": source}
    report = _clean_nans({"meta": meta, "results": rows})
    if out is not None:
        kind = fmt or ("json" if out.suffix == ".json" else "markdown" if out.suffix in (".md", ".markdown") else None)
        if kind is None:
            raise _fail(f"--out {out}: cannot tell the format from the extension; pass --format json|markdown")
        out.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(report, indent=2, default=_json_default) if kind == "json" else _markdown(rows, meta)
        out.write_text(text + "\n")
    if json_out:
        _print_json(report)
        return
    t = Table(title=f"layerzero bench on {dev} ({repeats} repeats)")
    for col in ("operation", "shape", "kernel", "median us", "p10-p90 us", "vs torch", "max err", "ok"):
        t.add_column(col, justify="right" if col in ("median us", "p10-p90 us", "vs torch", "max err") else "left")
    for r in rows:
        name = f"[bold green]{r['kernel_id']}[/bold green]" if r["chosen"] else r["kernel_id"]
        t.add_row(r["operation"], _esc(r["shape"]), name, _num(r["median_us"], ".1f"),
                  f"{_num(r['p10_us'], '.1f')}-{_num(r['p90_us'], '.1f')}", _num(r["speedup_vs_torch"], ".2f", "x"),
                  _num(r["max_error"], ".1e"), _yes_no(r["ok"]) + ("" if r["ok"] else f" {_esc(r['error'])}"))
    console = _console()
    console.print(t)
    if out is not None:
        console.print(f"wrote {out}")


@app.command()
def tune(
    shapes: Annotated[Optional[Path], typer.Option("--shapes", help="YAML/JSON list of shapes (default grid).")] = None,
    op: Annotated[Optional[list[str]], typer.Option("--op", help="Only these operations (repeatable, globs).")] = None,
    cache: Annotated[Optional[Path], typer.Option(help="Autotune cache file (default: the per-user cache).")] = None,
    device: Annotated[Optional[str], typer.Option(help="cpu | cuda | cuda:N (default: cuda when present).")] = None,
    dtype: Annotated[Optional[str], typer.Option(help="Override the shapes' dtype.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    progress: Annotated[bool, typer.Option(help="Progress bar.")] = True,
) -> None:
    """Fill the autotune cache ahead of time: time the conforming kernels of each shape, keep the fastest."""
    from layerzero.tuning.shapes import shape_label
    from layerzero.tuning.sweep import tune as run_tune

    dev = _device_or_exit(device)
    shape_list = _shapes(shapes, op, dev, dtype)
    result = run_tune(shape_list, device=dev, cache_path=str(cache) if cache is not None else None,
                      progress=progress)
    chosen = result.get("chosen", {})
    rows = [{"shape": shape_label(s), "kernel_id": chosen.get(repr(s))} for s in shape_list]
    if json_out:
        _print_json({"cache": result.get("cache"), "entries": result.get("entries"), "results": rows})
        return
    t = Table(title=f"layerzero tune on {dev}")
    t.add_column("shape")
    t.add_column("fastest conforming kernel")
    for r in rows:
        t.add_row(_esc(r["shape"]), r["kernel_id"] or "-")
    console = _console()
    console.print(t)
    console.print(f"cache: {result.get('cache')} ({result.get('entries')} entries)")


def main() -> None:
    """Console-script entry point (``layerzero = "layerzero.cli:main"``)."""
    app()
