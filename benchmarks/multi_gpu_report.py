"""The markdown table of benchmarks/multi_gpu.py's result (parity, the fp32 check, speed-ups, what ran where)."""

from __future__ import annotations

import json
from typing import Any

from e2e import profile_markdown


def headline(entry: dict[str, Any]) -> dict[str, Any]:
    if "error" in entry:
        return {"error": entry["error"]}
    p = entry.get("parity_patched_vs_unpatched", {})
    return {"parity": p.get("passed"), "max_abs_diff": p.get("max_abs_diff"), "speedup": entry.get("speedup"),
            "patched": entry.get("patch", {}).get("patched")}


# ---------------------------------------------------------------------------------------------- markdown
def _fmt(v: Any, spec: str = ",.0f") -> str:
    return "n/a" if v is None else format(v, spec)


def markdown(result: dict[str, Any]) -> str:
    v = result["versions"]
    lines = [f"# Multi-GPU: patched vs unpatched ({result['date']})", "",
             f"Mode {result['mode']}; device: {result['device']}; dtype {result['dtype']}; shape {result['shape']}; "
             f"torch {v['torch']}, transformers {v['transformers']}, accelerate {v['accelerate']}; commit {v['git']}.",
             "", f"Status: **{result['status']}**", ""]
    if result.get("not_run"):
        lines += ["Not run:", ""] + [f"- {item}" for item in result["not_run"]] + [""]
    if result.get("config"):
        lines += [f"Config: `{json.dumps(result['config'])}`", ""]
    setups = result["setups"]
    if not setups:
        return "\n".join(lines) + "\n"
    lines += ["## Parity (patched vs unpatched, same weights and placement)", "",
              "| setup | max abs diff | mean abs diff | top-1 agreement | noise floor (eager vs sdpa) | greedy tokens equal "
              "| verdict |", "|---|---|---|---|---|---|---|"]
    for name, e in setups.items():
        if "error" in e:
            lines.append(f"| {name} | error: {e['error'][:200]} | | | | | failed |")
            continue
        p, f = e["parity_patched_vs_unpatched"], e["noise_floor_eager_vs_sdpa"]
        lines.append(f"| {name} | {p['max_abs_diff']:.3g} | {p['mean_abs_diff']:.3g} | {p['top1_agreement']:.4f} | "
                     f"{f['max_abs_diff']:.3g} | {p['greedy_equal']}/{p['greedy_tokens']} | "
                     f"{'pass' if p['passed'] else 'FAIL'} ({p['criterion']}) |")
    checked = {n: e["fp32_check"] for n, e in setups.items() if "fp32_check" in e}
    if checked:
        lines += ["", "## Deterministic check (weights upcast to fp32, TF32 off)", "",
                  "| setup | max abs diff | bound | top-1 agreement | greedy tokens equal | verdict |",
                  "|---|---|---|---|---|---|"]
        for name, c in checked.items():
            lines.append(f"| {name} | {c['max_abs_diff']:.3g} | {c['bound']:.3g} | {c['top1_agreement']:.4f} | "
                         f"{c['greedy_equal']}/{c['greedy_tokens']} | {'pass' if c['passed'] else 'FAIL'} |")
    ok = {n: e for n, e in setups.items() if "error" not in e}
    if ok:
        shapes = list(next(iter(ok.values()))["unpatched"]["prefill_tokens_per_s"])
        n_rounds = len(next(iter(ok.values())).get("rounds", [])) or 1
        lines += ["", f"Timing: unpatched and patched alternate over {n_rounds} rounds on the same model; a speed-up "
                  "is the median of the per-round ratios, the numbers beside it the medians over rounds.",
                  "", "## Prefill tokens/s: unpatched -> patched (speedup)", "",
                  "| setup | " + " | ".join(shapes) + " |", "|---|" + "---|" * len(shapes)]
        for name, e in ok.items():
            cells = []
            for s in shapes:
                a, b = e["unpatched"]["prefill_tokens_per_s"].get(s), e["patched"]["prefill_tokens_per_s"].get(s)
                sp = e["speedup"]["prefill"].get(s)
                cells.append(f"{_fmt(a)} -> {_fmt(b)} ({_fmt(sp, '.2f')}x)")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines += ["", "## Decode ms/step (dynamic cache): unpatched -> patched (speedup)", "",
                  "| setup | unpatched | patched | speedup |", "|---|---|---|---|"]
        for name, e in ok.items():
            lines.append(f"| {name} | {_fmt(e['unpatched']['decode_ms_per_step'], '.2f')} | "
                         f"{_fmt(e['patched']['decode_ms_per_step'], '.2f')} | {_fmt(e['speedup']['decode'], '.2f')}x |")
        lines += ["", "## What was patched, where it ran", ""]
        for name, e in ok.items():
            pt = e["patch"]
            lines.append(f"- **{name}**: patched {json.dumps(pt['patched'])}, attention "
                         f"`{pt['attn_implementation']}`; kernels {json.dumps(pt['kernels'])}; "
                         f"circuit keys {', '.join(pt['circuit_keys']) or '(none)'}; failures {pt['failures']}, "
                         f"fallbacks {pt['fallbacks']}.")
            for why, s in pt["skipped"].items():
                lines.append(f"  - skipped {s['count']} ({', '.join(s['examples'])}, ...): {why}")
            if name == "device_map":
                lines.append(f"  - placement: {json.dumps(e['placement'])}")
            if name == "tp":
                lines.append(f"  - sharding: {json.dumps(e.get('sharding'))}; backend {e.get('backend')}; ranks: "
                             + "; ".join(f"rank {r.get('rank')} on {r.get('device')}: max abs diff "
                                         f"{_fmt((r.get('parity') or {}).get('max_abs_diff'), '.3g')}"
                                         for r in e.get("ranks", [])))
    for name, e in ok.items() if ok else ():
        for variant in ("unpatched", "patched"):
            prof = e.get(f"profile_{variant}")
            if prof:
                lines += profile_markdown(f"Decode profile, {name}, {variant}", prof)
    errors = [(n, e) for n, e in setups.items() if "error" in e]
    if errors:
        lines += ["", "## Errors", ""]
        for n, e in errors:
            lines += [f"### {n}", "", "```", e["error"], (e.get("traceback") or e.get("stderr_tail") or "")[-2000:],
                      "```"]
            for rank, tail in (e.get("rank_stderr_tails") or {}).items():
                lines += ["", f"{rank} stderr:", "", "```", tail or "(empty)", "```"]
    return "\n".join(lines) + "\n"
