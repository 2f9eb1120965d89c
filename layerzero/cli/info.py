"""``layerzero doctor`` and ``layerzero kernels``: what this machine can run, and the kernel catalogue.

The data comes from :mod:`layerzero.cli.doctor` (environment and backend facts, no rendering); this
module only renders it and decides the exit code: the doctor fails (exit 1) when something the user
configured is broken, e.g. ``$LAYERZERO_POLICY`` names a missing or invalid file, because a health check
that prints a red line and exits 0 is invisible to scripts and CI.
"""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from layerzero.cli.common import EXIT_PROBLEM, check_operation, console, did_you_mean, esc, print_json, usage, yes_no


def doctor(
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Check the environment: torch/CUDA/device, each backend (installed, version, usable here, why not),
    and your configuration ($LAYERZERO_POLICY, $LAYERZERO_HF_RULES). Exits 1 when your configuration is broken."""
    from layerzero.cli.doctor import backend_rows, configuration_problems, default_choices, environment

    env = environment()
    backends = backend_rows()
    device = "cuda" if env["cuda_available"] else "cpu"
    problems = configuration_problems()
    try:
        choices = default_choices(device)
    except Exception as e:  # noqa: BLE001 - e.g. an invalid $LAYERZERO_POLICY: still show the rest
        choices = [{"shape": "(default grid)", "chosen": None, "usable": 0, "candidates": 0, "error": str(e)}]
    if json_out:
        print_json({"environment": env, "backends": backends, "default_choices": choices,
                    "configuration_problems": problems, "ok": not problems})
    else:
        _render_doctor(env, backends, choices, device, problems)
    if problems:
        raise typer.Exit(EXIT_PROBLEM)


def _render_doctor(env: dict[str, Any], backends: list[dict[str, Any]], choices: list[dict[str, Any]], device: str,
                   problems: list[str]) -> None:
    out = console()
    t = Table(title="Environment", show_header=False)
    t.add_column("fact", style="bold")
    t.add_column("value")
    for key, value in env.items():
        if key == "devices":
            continue
        t.add_row(key, esc(value if value is not None else "-"))
    if env["devices"]:
        for d in env["devices"]:
            t.add_row(f"cuda:{d['index']}", f"{d['name']} (sm {d['capability']}, {d['memory_gib']} GiB)")
    else:
        t.add_row("devices", "no CUDA device: GPU-only kernels are rejected (see `layerzero explain`)")
    out.print(t)
    b = Table(title="Backends")
    for col in ("backend", "installed", "version", f"usable on {device}", "why not"):
        b.add_column(col, overflow="fold" if col == "why not" else "ellipsis")
    for row in backends:
        b.add_row(row["backend"], yes_no(row["installed"]), row["version"] or "-", yes_no(row["usable"]),
                  esc(row["reason"] or ""))
    out.print(b)
    c = Table(title=f"Policy choices on {device} ($LAYERZERO_POLICY or the default policy)")
    for col in ("call", "chosen kernel", "runnable"):
        c.add_column(col)
    for row in choices:
        chosen = row["chosen"] or f"[red]none[/red] {esc(row.get('error', ''))}"
        c.add_row(esc(row["shape"]), chosen, f"{row['usable']}/{row['candidates']}")
    out.print(c)
    if problems:
        for p in problems:
            out.print(f"[bold red]problem:[/bold red] {esc(p)}")
    else:
        out.print("[green]configuration OK[/green]")


def _constraint_summary(spec: Any) -> str:
    """The constraints that matter when choosing, in a few words."""
    from layerzero.operations import ATTENTION_OPS

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
    if any(spec.serves(op) for op in ATTENTION_OPS):
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


def kernels(
    op: Annotated[Optional[str], typer.Option("--op", help="Only kernels serving this operation (glob ok).")] = None,
    backend: Annotated[Optional[str], typer.Option("--backend", help="Only kernels of this backend.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """The kernel catalogue: ids, operations, backend, priority, constraints, and whether it can run here."""
    from layerzero.registry import get_global_backend_registry, get_global_kernel_registry

    registry = get_global_kernel_registry()
    backends = get_global_backend_registry()
    if backend is not None and backend not in backends:
        known = sorted(b.backend_id for b in backends.all())
        usage(f"--backend {backend!r} is not a known backend{did_you_mean(backend, known)}; use one of "
              f"{', '.join(known)}")
    wanted_ops = check_operation("--op", op, globs=True) if op is not None else None
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
        print_json(out)
        return
    t = Table(title=f"LayerZero kernels ({len(specs)})")
    for col in ("kernel", "operations", "backend", "prio", "constraints", "backend ok", "aliases"):
        t.add_column(col, overflow="fold" if col == "constraints" else "ellipsis", no_wrap=col == "kernel")
    for s in specs:
        t.add_row(s.kernel_id, ", ".join(s.operations), s.backend, str(s.priority), esc(_constraint_summary(s)),
                  yes_no(backends.is_available(s.backend)), ", ".join(s.aliases))
    console().print(t)
