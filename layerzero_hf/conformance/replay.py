"""Replaying recorded calls on every kernel the dispatcher finds eligible, against the fp32 reference.

For each recorded call the dispatcher is asked which kernels it would run (``explain``: chosen and
eligible, i.e. anything a policy or a fallback could pick), each is run directly on the recorded
tensors, and every output is compared with the operation's reference kernel under per-dtype
tolerances. A kernel raising on a call its constraints accept fails as well: selection would have
picked it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch

from layerzero import validation
from layerzero.context import SelectionContext
from layerzero.validation import tolerance
from layerzero_hf.conformance.recording import RecordedCall

__all__ = ["ConformanceReport", "KernelResult", "compare_outputs", "replay"]


@dataclass
class KernelResult:
    """One kernel on one recorded call."""

    kernel_id: str
    operation: str
    call_index: int
    call: str  # RecordedCall.describe()
    label: str
    phase: str
    module: str | None
    dtype: str
    status: str  # "pass", "fail" or "skipped" (a kernel named in kernels= that the call rules out)
    max_abs_error: float | None = None
    atol: float | None = None
    rtol: float | None = None
    error: str | None = None


@dataclass
class ConformanceReport:
    """Every kernel x call outcome, with a per (operation, kernel) summary for tables."""

    results: list[KernelResult] = field(default_factory=list)
    calls: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def failures(self) -> list[KernelResult]:
        return [r for r in self.results if r.status == "fail"]

    @property
    def ok(self) -> bool:
        return not self.failures

    def extend(self, other: "ConformanceReport") -> None:
        offset = self.calls
        for r in other.results:
            r.call_index += offset
            self.results.append(r)
        self.calls += other.calls

    def summary(self, group: Sequence[str] = ("operation", "kernel_id")) -> list[dict[str, Any]]:
        """One row per group: calls run, passed, failed, worst error, first failure's text."""
        rows: dict[tuple, dict[str, Any]] = {}
        for r in self.results:
            if r.status == "skipped":
                continue
            key = tuple(getattr(r, g) for g in group)
            row = rows.setdefault(key, {**dict(zip(group, key)), "calls": 0, "passed": 0, "failed": 0,
                                        "max_abs_error": 0.0, "first_failure": None})
            row["calls"] += 1
            row["passed" if r.status == "pass" else "failed"] += 1
            if r.max_abs_error is not None and r.max_abs_error == r.max_abs_error:
                row["max_abs_error"] = max(row["max_abs_error"], r.max_abs_error)
            if r.status == "fail" and row["first_failure"] is None:
                row["first_failure"] = f"{r.call}: {r.error}"
        return list(rows.values())

    def as_dict(self) -> dict[str, Any]:
        return {"meta": self.meta, "calls": self.calls, "ok": self.ok, "summary": self.summary(),
                "results": [asdict(r) for r in self.results]}

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.as_dict(), indent=1, default=str))

    def __str__(self) -> str:
        lines = [f"{'operation':<18} {'kernel':<34} {'calls':>5} {'result':<6} {'max err':>9}"]
        for row in self.summary():
            verdict = "PASS" if not row["failed"] else f"FAIL {row['failed']}"
            lines.append(f"{row['operation']:<18} {row['kernel_id']:<34} {row['calls']:>5} {verdict:<6} "
                         f"{row['max_abs_error']:>9.3g}")
        for r in self.failures[:20]:
            lines.append(f"  FAIL {r.kernel_id}: {r.call}: {r.error}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- comparison
def compare_outputs(
    out: Any, expected: Any, operation: str, defined: torch.Tensor | None = None,
    arguments: dict[str, Any] | None = None,
) -> tuple[str | None, float, tuple[float, float]]:
    """(why it fails or None, max abs error, (atol, rtol)) of a kernel's output against the reference's.

    The verdict is :func:`layerzero.validation.compare_outputs`, the check the dispatcher itself runs, so
    replay and verification agree on what a wrong result is. Replay adds what a report needs: outputs
    must keep the reference's dtype, rows marked undefined in ``defined`` (fully masked attention rows,
    whose output the contract leaves to the kernel) are not compared, and the worst error is measured."""
    outs = tuple(out) if isinstance(out, (tuple, list)) else (out,)
    exps = tuple(expected) if isinstance(expected, (tuple, list)) else (expected,)
    tol = tolerance(operation, exps[0].dtype)
    comparable = len(outs) == len(exps) and all(
        isinstance(o, torch.Tensor) and tuple(o.shape) == tuple(e.shape) for o, e in zip(outs, exps)
    )
    if comparable:
        for i, (o, e) in enumerate(zip(outs, exps)):
            if o.dtype != e.dtype:
                return f"output {i} dtype {o.dtype} != reference {e.dtype}", float("nan"), tol
        if defined is not None:  # an undefined row takes the reference's value, so it never counts
            outs = (torch.where(defined.expand_as(outs[0]), outs[0], exps[0]), *outs[1:])
    why = validation.compare_outputs(operation, outs, exps, arguments)
    return why, _max_abs_error(outs, exps) if comparable else float("nan"), tol


def _max_abs_error(outs: Sequence[torch.Tensor], exps: Sequence[torch.Tensor]) -> float:
    """The largest |output - reference| where the reference is finite; NaN when an output is not finite
    where the reference is."""
    worst = 0.0
    for o, e in zip(outs, exps):
        of, ef = o.detach().float(), e.detach().float().to(o.device)
        bad_ref = ~torch.isfinite(ef)
        if bool((~torch.isfinite(of) & ~bad_ref).any()):
            return float("nan")
        if of.numel():
            worst = max(worst, float((of - ef).abs().masked_fill(bad_ref, 0).max()))
    return worst


# ---------------------------------------------------------------------------------------------- replay
def _orchestrator(orchestrator: Any) -> Any:
    from layerzero import ops

    if orchestrator is None or isinstance(orchestrator, str):
        return ops.get_orchestrator(orchestrator)
    return orchestrator


def _eligible(orch: Any, call: RecordedCall) -> tuple[list[str], dict[str, tuple[str, ...]]]:
    ctx = SelectionContext.from_inputs(call.operation, call.inputs, **call.options)
    exp = orch.explain(call.operation, ctx)
    chosen = [c.kernel_id for c in exp.candidates if c.status in ("chosen", "eligible")]
    return chosen, exp.rejected()


def _snapshot(values: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in values.items() if isinstance(v, torch.Tensor)}


def replay(
    calls: Iterable[RecordedCall],
    orchestrator: Any = None,
    kernels: Iterable[str] | None = None,
    eligible: Callable[[RecordedCall], Iterable[str]] | None = None,
) -> ConformanceReport:
    """Run every recorded call on every kernel eligible for it (or only on ``kernels``, by id) and compare
    with the reference. ``orchestrator``: whose policy and catalogue decide eligibility (an orchestrator,
    a registered name, or None for the global one). ``eligible``: decides it instead, ``call -> kernel
    ids`` (the tests run GPU kernels' adapters on CPU against stand-in libraries with their constraints
    checked as on a GPU, where the orchestrator would rule them out for want of the device)."""
    orch = _orchestrator(orchestrator)
    registry = getattr(orch, "kernel_registry", None)
    if registry is None:
        from layerzero.registry import get_global_kernel_registry

        registry = get_global_kernel_registry()
    wanted = None if kernels is None else {registry.canonical_id(k) for k in kernels}
    report = ConformanceReport()
    for index, call in enumerate(calls):
        report.calls += 1
        if eligible is None:
            accepted, rejected = _eligible(orch, call)
        else:
            accepted, rejected = list(eligible(call)), {}
        ids = accepted if wanted is None else [k for k in accepted if k in wanted]
        base = dict(operation=call.operation, call_index=index, call=call.describe(), label=call.label,
                    phase=call.phase, module=call.module, dtype=_dtype_of(call))
        for kid in sorted((wanted or set()) - set(accepted)):
            if registry.find(kid) is not None and registry.get(kid).serves(call.operation):
                why = "; ".join(rejected.get(kid, ("not eligible",)))
                report.results.append(KernelResult(kid, status="skipped", error=why, **base))
        if not ids:
            continue
        ref_spec = registry.reference_for(call.operation)
        if ref_spec is None:
            raise LookupError(f"replay: no reference kernel (tag 'reference') for operation {call.operation!r}; "
                              "register one so recorded calls can be checked")
        with torch.no_grad():
            expected = ref_spec.impl(**ref_spec.map_arguments(call.inputs, call.options))
        defined = validation.defined_rows(call.operation, {**call.inputs, **call.options})
        for kid in ids:
            report.results.append(_run_one(registry.get(kid), call, expected, defined, base))
    return report


def _run_one(spec: Any, call: RecordedCall, expected: Any, defined: torch.Tensor | None,
             base: dict[str, Any]) -> KernelResult:
    before = _snapshot({**call.inputs, **call.options})
    try:
        with torch.no_grad():
            out = spec.impl(**spec.map_arguments(call.inputs, call.options))
    except Exception as exc:  # noqa: BLE001 - a kernel that accepts a call must run it
        return KernelResult(spec.kernel_id, status="fail", error=f"raised {type(exc).__name__}: {exc}"[:500], **base)
    why, err, (atol, rtol) = compare_outputs(out, expected, call.operation, defined, {**call.inputs, **call.options})
    if why is None:
        for name, t in before.items():
            now = call.inputs.get(name, call.options.get(name))
            if not torch.equal(t, now):
                why = f"mutated its input {name!r}"
                break
    return KernelResult(spec.kernel_id, status="pass" if why is None else "fail", max_abs_error=err, atol=atol,
                        rtol=rtol, error=why, **base)


def _dtype_of(call: RecordedCall) -> str:
    for v in call.inputs.values():
        if isinstance(v, torch.Tensor):
            return str(v.dtype).removeprefix("torch.")
    return "?"
