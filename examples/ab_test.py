"""A/B testing two kernel configurations with hot reload (the ``ABTestingDispatcher`` pattern of the API examples).

Two policy files are written to a temporary directory: A (stable) lets the built-in priorities choose,
B (experimental) locks attention to SDPA's math kernel and RMSNorm to the fp32 reference. A share of the
traffic (``b_ratio``) goes to B; both files stay watched, so either arm can be changed while serving.
The script checks that both arms compute the same thing and prints the split and the kernels per arm.

For whole models, ``layerzero_hf.patch(model, arms=...)`` assigns A/B arms per model and labels telemetry
by arm, and ``layerzero_hf.compare_policies`` compares two policies on the same inputs.

Runs on CPU in a second or two: ``python examples/ab_test.py``.
"""

from __future__ import annotations

import collections
import random
import tempfile
from pathlib import Path

import torch

from layerzero.dispatch import DispatchConfig, DispatchMode, HotReloadDispatcher

STABLE = """\
version: "1.0"
defaults:
  fallback_policy: torch_sdpa
"""

EXPERIMENTAL = """\
version: "1.0"
kernel_locks:
  attention.*: torch_sdpa_math_attention
  rms_norm: reference_rms_norm
fallback_chains:
  attention.causal: [torch_sdpa_math_attention, torch_sdpa]
"""


class ABTestingDispatcher:
    """Dispatcher for A/B testing kernel configurations (the pattern of the public API examples)."""

    def __init__(self, config_a_path: str, config_b_path: str, b_ratio: float = 0.1):
        self._config_a = DispatchConfig(
            mode=DispatchMode.HOT_RELOAD,
            config_path=config_a_path,
            validate_on_reload=True,
        )
        self._config_b = DispatchConfig(
            mode=DispatchMode.HOT_RELOAD,
            config_path=config_b_path,
            validate_on_reload=True,
        )

        self._dispatcher_a = HotReloadDispatcher(self._config_a)
        self._dispatcher_b = HotReloadDispatcher(self._config_b)
        self._b_ratio = b_ratio

        # Start watching both configs
        self._dispatcher_a.watch()
        self._dispatcher_b.watch()

        # Metrics
        self._a_calls = 0
        self._b_calls = 0

    def dispatch(self, operation: str, inputs: dict, **kwargs):
        """Dispatch with A/B traffic split."""
        use_b = random.random() < self._b_ratio

        if use_b:
            self._b_calls += 1
            return self._dispatcher_b.dispatch(operation, inputs, **kwargs)
        else:
            self._a_calls += 1
            return self._dispatcher_a.dispatch(operation, inputs, **kwargs)

    def set_b_ratio(self, ratio: float):
        """Adjust B traffic ratio."""
        self._b_ratio = max(0.0, min(1.0, ratio))

    def get_stats(self):
        """Get A/B test statistics."""
        total = self._a_calls + self._b_calls
        return {
            "a_calls": self._a_calls,
            "b_calls": self._b_calls,
            "a_ratio": self._a_calls / total if total > 0 else 0,
            "b_ratio": self._b_calls / total if total > 0 else 0,
            "config_a_version": self._dispatcher_a.stats.current_version,
            "config_b_version": self._dispatcher_b.stats.current_version,
        }

    def close(self) -> None:
        """Stop both file watchers (the dispatchers would otherwise stop only when collected)."""
        self._dispatcher_a.stop()
        self._dispatcher_b.stop()


def main() -> None:
    random.seed(0)
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 32, 4, 32), torch.randn(1, 32, 2, 32), torch.randn(1, 32, 2, 32)
    x, w = torch.randn(16, 128), torch.randn(128)
    with tempfile.TemporaryDirectory() as tmp:
        a_path, b_path = Path(tmp) / "kernels_stable.yaml", Path(tmp) / "kernels_experimental.yaml"
        a_path.write_text(STABLE)
        b_path.write_text(EXPERIMENTAL)
        ab = ABTestingDispatcher(str(a_path), str(b_path), b_ratio=0.05)  # 5% of traffic to experimental
        kernels: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        outputs: dict[str, dict[str, torch.Tensor]] = collections.defaultdict(dict)
        try:
            for ratio in (0.05, 0.10, 0.50):  # gradually increase B traffic
                ab.set_b_ratio(ratio)
                before = ab.get_stats()  # the counters are cumulative: report this setting's own split
                for _ in range(100):
                    for op, inputs in (("attention.causal", {"query": q, "key": k, "value": v}),
                                       ("rms_norm", {"x": x, "weight": w})):
                        result = ab.dispatch(op, inputs)
                        kernels[op][result.kernel_id] += 1
                        outputs[op][result.kernel_id] = result.output
                after = ab.get_stats()
                a_calls = after["a_calls"] - before["a_calls"]
                b_calls = after["b_calls"] - before["b_calls"]
                print(f"b_ratio={ratio:.2f}: {a_calls} calls to A, {b_calls} to B "
                      f"({b_calls / (a_calls + b_calls):.0%} B) in this setting")
            print(f"totals: {ab.get_stats()}")
        finally:
            ab.close()
    print("kernels per operation (A's choice and B's lock):")
    for op, counts in kernels.items():
        print(f"  {op}: {dict(counts)}")
        ran = list(outputs[op].values())
        worst = max((a - b).abs().max().item() for a in ran for b in ran)
        print(f"    outputs of the two arms differ by at most {worst:.1e}")
        assert len(counts) == 2 and worst < 1e-4


if __name__ == "__main__":
    main()
