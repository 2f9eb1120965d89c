"""PatchReport: what :func:`layerzero_hf.patch` did to a model, and what it left alone and why.

A patch that silently does nothing is the failure users cannot see, so every module the spec or the
detector considered appears here either as patched (with the kernel operation it now dispatches) or as
skipped (with the reason). The report renders as text (``repr``) and as a table in notebooks.
"""

from __future__ import annotations

import html
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class PatchedModule:
    path: str  # qualified module name ("model.layers.0.mlp"; "" is the model itself)
    kind: str  # rms_norm | layer_norm | rope | mlp
    op: str  # the LayerZero operation it now dispatches (rms_norm, rope, swiglu, geglu, layer_norm)
    module_class: str
    detail: str = ""  # e.g. "offset=1.0 casting=gemma", "gate_up_fused silu"
    source: str = ""  # patch spec name, or "detected"


@dataclass(frozen=True)
class SkippedModule:
    path: str
    kind: str
    module_class: str
    reason: str


@dataclass
class PatchReport:
    """The record of one patch. ``experiment``/``arm`` are set when an A/B experiment assigned the model."""

    model_class: str
    model_type: str | None
    spec: str | None  # the spec file used, or "detected" for an unknown architecture
    orchestrator: str | None
    attn_implementation: str | None = None
    experiment: str | None = None
    arm: str | None = None
    rules: tuple[str, ...] = ()
    kernels: dict[str, str] = field(default_factory=dict)  # operation -> kernel id forced by rules/arm/call
    patched: list[PatchedModule] = field(default_factory=list)
    skipped: list[SkippedModule] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    # ------------------------------------------------------------------ queries
    def counts(self) -> dict[str, int]:
        """Patched modules per kind (``{"rms_norm": 5, "rope": 2, "mlp": 2}``)."""
        return dict(Counter(p.kind for p in self.patched))

    def paths(self, kind: str | None = None) -> list[str]:
        return [p.path for p in self.patched if kind is None or p.kind == kind]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    # ------------------------------------------------------------------ rendering
    def _header(self) -> list[tuple[str, str]]:
        rows = [
            ("model", f"{self.model_class} (model_type={self.model_type})"),
            ("spec", str(self.spec)),
            ("orchestrator", str(self.orchestrator)),
            ("attention", str(self.attn_implementation)),
        ]
        if self.experiment:
            rows.append(("experiment", f"{self.experiment} -> arm {self.arm}"))
        if self.rules:
            rows.append(("rules", ", ".join(self.rules)))
        if self.kernels:
            rows.append(("kernels", ", ".join(f"{k}={v}" for k, v in sorted(self.kernels.items()))))
        counts = self.counts()
        rows.append(("patched", ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "nothing"))
        rows.append(("skipped", str(len(self.skipped))))
        return rows

    def __repr__(self) -> str:
        lines = ["PatchReport("]
        lines += [f"  {k:<13}{v}" for k, v in self._header()]
        if self.patched:
            lines.append("  patched modules:")
            for p in self.patched:
                extra = f"  [{p.source}: {p.detail}]" if p.detail else f"  [{p.source}]"
                lines.append(f"    {p.path or '<model>'}: {p.module_class} -> {p.op}{extra}")
        if self.skipped:
            lines.append("  left alone:")
            for s in self.skipped:
                lines.append(f"    {s.path or '<model>'}: {s.module_class} ({s.kind}): {s.reason}")
        for n in self.notes:
            lines.append(f"  note: {n}")
        lines.append(")")
        return "\n".join(lines)

    __str__ = __repr__

    def _repr_html_(self) -> str:
        e = html.escape
        head = "".join(f"<tr><th style='text-align:left'>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in self._header())
        rows = "".join(
            f"<tr><td><code>{e(p.path or '<model>')}</code></td><td>{e(p.module_class)}</td><td>{e(p.kind)}</td>"
            f"<td>{e(p.op)}</td><td>{e(p.detail)}</td></tr>"
            for p in self.patched
        )
        skipped = "".join(
            f"<tr><td><code>{e(s.path or '<model>')}</code></td><td>{e(s.module_class)}</td><td>{e(s.kind)}</td>"
            f"<td colspan=2>{e(s.reason)}</td></tr>"
            for s in self.skipped
        )
        notes = "".join(f"<li>{e(n)}</li>" for n in self.notes)
        return (
            "<div><b>LayerZero PatchReport</b>"
            f"<table>{head}</table>"
            "<table><tr><th>module</th><th>class</th><th>kind</th><th>op</th><th>detail</th></tr>"
            f"{rows}</table>"
            + (f"<details><summary>left alone ({len(self.skipped)})</summary><table>{skipped}</table></details>"
               if self.skipped else "")
            + (f"<ul>{notes}</ul>" if notes else "")
            + "</div>"
        )
