"""Autotuned dispatch: on the first call of a shape bucket, time every eligible kernel and keep the fastest.

Only kernels that pass the policy and their constraints are timed, and only those whose output matches the
reference for that very call (per-dtype tolerance) can win. The choice is persisted in a
:class:`~layerzero.tuning.TuningCache` keyed by device, library versions, operation and bucket, and read
back on start, so a server tunes once per shape per upgrade. Tuning never happens while torch.compile
traces or a CUDA graph is captured: those calls get the policy's ranking and are not cached, so the next
eager call tunes.

The measuring is a ranking (:class:`AutotuneRanking`, a
:class:`~layerzero.selection.ranking.CallRanking`): the dispatcher is the ordinary one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Hashable, Mapping

import torch

from layerzero.dispatch.dispatcher import Dispatcher
from layerzero.dispatch.types import DispatchConfig, DispatchMode
from layerzero.selection.engine import Plan
from layerzero.selection.ranking import PriorityRanking
from layerzero.tuning.cache import TuneEntry, TuningCache, device_name
from layerzero.tuning.measure import conformance_problem, time_call, unsafe_to_time

if TYPE_CHECKING:
    from layerzero.registry import KernelRegistry

__all__ = ["AutotuneDispatcher", "AutotuneRanking"]


class AutotuneRanking(PriorityRanking):
    """The policy's order until a bucket's first call, then the fastest conforming kernel first (the rest
    keep the policy's order). ``tuning`` persists the choices."""

    name = "autotune"

    def __init__(self, config: DispatchConfig, kernel_registry: "KernelRegistry", tuning: TuningCache):
        self.config = config
        self.kernel_registry = kernel_registry
        self.tuning = tuning

    def rank_call(
        self, plan: Plan, key: Hashable, operation: str, inputs: Mapping[str, Any], kwargs: Mapping[str, Any]
    ) -> tuple[Plan, bool]:
        if unsafe_to_time() is not None:
            return plan, False  # not cached: the next eager call of this bucket tunes
        return self.tuned_plan(plan, key, operation, inputs, kwargs), True

    def tuned_plan(self, plan: Plan, key: Any, operation: str, inputs: Mapping[str, Any], kwargs: Mapping[str, Any]) -> Plan:
        if len(plan.kernels) < 2:
            return plan
        first = next((t for t in inputs.values() if isinstance(t, torch.Tensor)), None)
        if first is None:
            return plan
        tkey = TuningCache.key(device_name(first.device), operation, key)
        entry = self.tuning.get(tkey)
        if entry is None or entry.kernel_id not in {k.kernel_id for k in plan.kernels}:
            entry = self.measure(plan, operation, inputs, kwargs, first)
            if entry is None:
                return plan
            self.tuning.put(tkey, entry)
        best = next(k for k in plan.kernels if k.kernel_id == entry.kernel_id)
        return Plan(plan.operation, (best, *[k for k in plan.kernels if k is not best]), plan.context)

    def measure(
        self, plan: Plan, operation: str, inputs: Mapping[str, Any], kwargs: Mapping[str, Any], first: torch.Tensor
    ) -> TuneEntry | None:
        """Time each kernel of the plan that conforms to the reference on these very inputs."""
        if kwargs.get("dropout_p"):
            return None  # random outputs cannot be checked against a reference
        ref = self._reference_output(plan, operation, inputs, kwargs)
        times: dict[str, float] = {}
        rejected: dict[str, str] = {}
        cfg = self.config
        for spec in plan.kernels:
            args = spec.map_arguments(inputs, kwargs)
            impl = spec.impl

            def call(impl=impl, args=args):
                return impl(**args)

            try:
                out = call()
            except Exception as e:  # noqa: BLE001 - a kernel that raises is simply not eligible
                rejected[spec.kernel_id] = f"raised {type(e).__name__}: {e}"
                continue
            if ref is not None:
                problem = conformance_problem(out, ref, first.dtype)
                if problem is not None:
                    rejected[spec.kernel_id] = problem
                    continue
            times[spec.kernel_id] = time_call(call, first.device, cfg.autotune_warmup, cfg.autotune_repeats)
        if not times:
            return None
        best = min(times, key=times.__getitem__)
        return TuneEntry(best, times, rejected)

    def _reference_output(self, plan: Plan, operation: str, inputs: Mapping[str, Any], kwargs: Mapping[str, Any]) -> Any:
        ref_spec = self.kernel_registry.reference_for(operation)
        candidates = ([ref_spec] if ref_spec is not None else []) + [plan.kernels[0]]
        for spec in candidates:
            try:
                return spec.impl(**spec.map_arguments(inputs, kwargs))
            except Exception:  # noqa: BLE001 - e.g. the fp32 reference runs out of memory at huge shapes
                continue
        return None


class AutotuneDispatcher(Dispatcher):
    """A :class:`~layerzero.dispatch.dispatcher.Dispatcher` ranked by :class:`AutotuneRanking` (same
    arguments, plus ``tuning_cache``; default: the file at ``config.autotune_cache_path``)."""

    mode = DispatchMode.AUTOTUNE

    def __init__(self, config: DispatchConfig | None = None, kernel_registry: "KernelRegistry | None" = None,
                 *args: Any, tuning_cache: TuningCache | None = None, **kwargs: Any):
        from layerzero.registry import get_global_kernel_registry

        config = config or DispatchConfig(mode=DispatchMode.AUTOTUNE)
        tuning = tuning_cache if tuning_cache is not None else TuningCache(config.autotune_cache_path)
        kernels = kernel_registry or get_global_kernel_registry()
        super().__init__(config, kernels, *args, ranking=AutotuneRanking(config, kernels, tuning), **kwargs)

    @property
    def tuning(self) -> TuningCache:
        return self.ranking.tuning  # type: ignore[attr-defined]

    @property
    def measure(self) -> Callable[..., TuneEntry | None]:
        """The ranking's timing step (replaceable, e.g. by a test that forbids measuring)."""
        return self.ranking.measure  # type: ignore[attr-defined]

    @measure.setter
    def measure(self, fn: Callable[..., TuneEntry | None]) -> None:
        self.ranking.measure = fn  # type: ignore[attr-defined]
