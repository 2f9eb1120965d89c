"""Cost of LayerZero's hot path, measured against calling the chosen kernel directly in the same run.

For a cached dispatch on tiny CPU tensors (so the kernel itself is as cheap as possible) it reports the
median per-call time of: the kernel called directly, ``dispatch()`` through the global orchestrator, a
dispatcher with telemetry and breakers off, the selection alone (key + cache lookup), and, when
Transformers is installed, a patched module's forward vs the original module's forward.

Targets (DESIGN/issue): dispatch() - direct <= 2 us, selection on a hit <= 1 us.

    python benchmarks/dispatch_overhead.py [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from layerzero.dispatch import DispatchConfig, DispatchMode, create_orchestrator, dispatch, get_global_orchestrator  # noqa: E402


def per_call_ns(fn: Callable[[], object], calls: int, rounds: int) -> float:
    """Median over rounds of the mean time per call within a round (robust to scheduler noise)."""
    for _ in range(min(calls, 200)):
        fn()
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter_ns()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter_ns() - t0) / calls)
    return statistics.median(samples)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="few iterations (CI smoke test); numbers are noisy")
    ap.add_argument("--json", type=Path, help="write the results as JSON here")
    args = ap.parse_args(argv)
    calls, rounds = (200, 5) if args.quick else (5000, 15)
    torch.set_num_threads(1)

    x = torch.randn(1, 8)
    w = torch.ones(8)
    inputs = {"x": x, "weight": w}
    orch = get_global_orchestrator()
    first = dispatch("rms_norm", inputs, eps=1e-6)
    spec = orch.kernel_registry.get(first.kernel_id)
    impl = spec.impl

    lean = create_orchestrator(DispatchConfig(mode=DispatchMode.DYNAMIC, enable_telemetry=False, circuit_breaker_enabled=False, record_timing=False))
    lean.dispatch("rms_norm", inputs, eps=1e-6)
    lean_dispatcher = lean.get_dispatcher()
    state = lean_dispatcher._state

    def selection_only() -> object:
        kw = {"eps": 1e-6}
        return state.engine.lookup(state.keyer("rms_norm", inputs, kw))

    results: dict[str, float] = {}
    results["direct_kernel_ns"] = per_call_ns(lambda: impl(x=x, weight=w, eps=1e-6), calls, rounds)
    results["dispatch_ns"] = per_call_ns(lambda: dispatch("rms_norm", inputs, eps=1e-6), calls, rounds)
    results["dispatch_lean_ns"] = per_call_ns(lambda: lean.dispatch("rms_norm", inputs, eps=1e-6), calls, rounds)
    results["selection_hit_ns"] = per_call_ns(selection_only, calls, rounds)
    results["dispatch_overhead_ns"] = results["dispatch_ns"] - results["direct_kernel_ns"]
    results["dispatch_lean_overhead_ns"] = results["dispatch_lean_ns"] - results["direct_kernel_ns"]

    patched = _patched_module_path(calls, rounds)
    results.update(patched)

    meta = {
        "kernel": first.kernel_id,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "quick": args.quick,
        "calls_per_round": calls,
        "rounds": rounds,
    }
    print(f"cached dispatch overhead on tiny CPU tensors (kernel {first.kernel_id}; median of {rounds} rounds x {calls} calls)")
    for name, value in results.items():
        print(f"  {name:<32} {value / 1000:8.2f} us")
    ok_dispatch = results["dispatch_overhead_ns"] <= 2000
    ok_sel = results["selection_hit_ns"] <= 1000
    print(f"  target dispatch overhead <= 2 us: {'met' if ok_dispatch else 'NOT met'}; selection hit <= 1 us: {'met' if ok_sel else 'NOT met'}")
    out = {"meta": meta, "results_ns": results}
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return out


def _patched_module_path(calls: int, rounds: int) -> dict[str, float]:
    """A Llama RMSNorm module's forward before and after ``layerzero_hf.patch`` (when Transformers is
    installed): the per-call cost a patched model pays in a decode loop."""
    try:
        from transformers import LlamaConfig, LlamaForCausalLM

        import layerzero_hf
    except Exception:
        return {}
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=128)
    model = LlamaForCausalLM(cfg).eval()
    norm = model.model.norm
    x = torch.randn(1, 1, 64)
    out: dict[str, float] = {}
    with torch.no_grad():
        out["hf_module_ns"] = per_call_ns(lambda: norm(x), calls, rounds)
        layerzero_hf.patch(model)
        if "forward" in norm.__dict__:
            out["patched_module_ns"] = per_call_ns(lambda: norm(x), calls, rounds)
            out["patched_module_overhead_ns"] = out["patched_module_ns"] - out["hf_module_ns"]
        layerzero_hf.unpatch(model)
    return out


if __name__ == "__main__":
    main()
