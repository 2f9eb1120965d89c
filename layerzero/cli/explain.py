"""``layerzero explain``: which kernel runs a described call, and why every other candidate did or did not.

The call is described by options (no tensors are allocated), so a CPU laptop can answer "what would run
on an H100 at this shape" with ``--device cuda --capability 9.0``. Options are checked first: sizes must
be positive, the dtype and device spelled as torch spells them (aliases and did-you-mean included).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from layerzero.cli.common import (
    EXIT_PROBLEM,
    check_choice,
    check_device,
    check_dtype,
    check_operation,
    check_positive,
    console,
    esc,
    load_policy_or_exit,
    print_json,
    usage,
)


def _parse_capability(text: Optional[str]) -> tuple[int, int] | None:
    if text is None:
        return None
    major, _, minor = text.partition(".")
    if not (major.isdigit() and (minor == "" or minor.isdigit())):
        usage(f"--capability {text!r}: expected MAJOR.MINOR, e.g. 9.0 for H100")
    return int(major), int(minor or 0)


def _dispatcher(policy: Any) -> Any:
    from layerzero.dispatch.dynamic import DynamicDispatcher
    from layerzero.dispatch.types import DispatchConfig

    return DynamicDispatcher(DispatchConfig(enable_telemetry=False, circuit_breaker_enabled=False), policy=policy)


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
    dtype: Annotated[str, typer.Option(help="float16 | bfloat16 | float32 | float64 (or fp16, bf16, ...).")] = "float16",
    device: Annotated[str, typer.Option(help="cpu | cuda | cuda:N (need not be present here).")] = "cuda",
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
    from layerzero.context.call_context import SelectionContext, device_capability
    from layerzero.operations import get

    check_operation("operation", operation, globs=False)
    dt = check_dtype("--dtype", dtype)
    dev = check_device("--device", device, need_present=False)
    check_positive({"--batch": batch, "--seq": seq, "--seq-k": seq_k, "--heads": heads, "--kv-heads": kv_heads,
                    "--head-dim": head_dim, "--head-dim-v": head_dim_v, "--hidden": hidden, "--tokens": tokens,
                    "--rotary-dim": rotary_dim, "--window": window})
    if not 0.0 <= dropout < 1.0:
        usage(f"--dropout {dropout}: a probability in [0, 1)")
    check_choice("--mask", mask, ("bool", "additive"))
    check_choice("--layout", layout, ("bhsd", "bshd"))
    check_choice("--casting", casting, ("llama", "gemma", "none"))
    cc = _parse_capability(capability)
    if cc is None:
        cc = device_capability(dev)
    pol, source = load_policy_or_exit(policy)
    facts: dict[str, Any] = dict(operation=operation, dtype=dt, device=dev, compute_capability=cc,
                                 requires_grad=grad)
    facts.update(get(operation).described_facts(dict(
        batch=batch, seq_q=seq, seq_k=seq_k, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
        head_dim_v=head_dim_v, tokens=tokens, hidden=hidden, is_causal=causal, attn_mask=mask,
        sliding_window=window, softcap=softcap, has_sinks=sinks, dropout_p=dropout, rotary_dim=rotary_dim,
        interleaved=interleaved, layout=layout, casting=casting or "llama", offset=offset, residual=residual,
    )))
    try:
        ctx = SelectionContext(**facts)
    except (TypeError, ValueError) as e:
        usage(f"the described call is inconsistent: {e}")
    exp = _dispatcher(pol).explain(operation, ctx)
    notes = list(exp.notes)
    if dev.startswith("cuda") and cc is None:
        notes.append("no CUDA device here and no --capability: compute-capability limits were not checked")
    if json_out:
        data = exp.as_dict()
        data["policy"] = source
        data["notes"] = notes
        print_json(data)
    else:
        _render(exp, source, notes)
    if exp.chosen is None:
        raise typer.Exit(EXIT_PROBLEM)


def _render(exp: Any, source: str, notes: list[str]) -> None:
    out = console()
    ctx = {k: v for k, v in exp.context.as_dict().items() if v not in (None, False, 0.0, ()) and k != "operation"}
    out.print(f"[bold]{exp.operation}[/bold]  " + esc(", ".join(f"{k}={v}" for k, v in ctx.items())))
    out.print(f"policy: {esc(source)}")
    if exp.chosen:
        out.print(f"chosen: [bold green]{exp.chosen}[/bold green]")
    else:
        out.print("chosen: [bold red]none: no kernel can run this call[/bold red]")
    t = Table()
    for col in ("#", "kernel", "backend", "prio", "status", "reason"):
        t.add_column(col, overflow="fold" if col == "reason" else "ellipsis", no_wrap=col == "kernel")
    style = {"chosen": "bold green", "eligible": "cyan", "rejected": "red"}
    for c in exp.candidates:
        t.add_row("" if c.rank is None else str(c.rank + 1), c.kernel_id, c.backend, str(c.priority),
                  f"[{style[c.status]}]{c.status}[/{style[c.status]}]", esc("; ".join(c.reasons)))
    out.print(t)
    if exp.fallback_order:
        out.print("fallback order: " + " -> ".join(exp.fallback_order))
    for n in notes:
        out.print(f"note: {esc(n)}")
