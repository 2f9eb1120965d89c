"""The dispatcher: key -> cached plan -> runner -> result, under one policy and one ranking.

There is one dispatcher class. What used to be four dispatchers are configurations of it:

* DYNAMIC: the policy filters, the ranking (``DispatchConfig.ranking``, default
  :func:`~layerzero.selection.measured_ranking.default_ranking`) orders;
* STATIC: a fixed catalogue (:class:`~layerzero.dispatch.static.StaticKernelRegistry`), no policy,
  :class:`~layerzero.selection.ranking.RegistrationOrder`;
* AUTOTUNE: a ranking that times the candidates on a bucket's first call and persists the choice;
* HOT_RELOAD: DYNAMIC whose policy comes from a watched file (a policy source calling ``set_policy``).

A cached dispatch builds one key tuple from tensor metadata, does one dict lookup and hands the plan to
the :class:`~layerzero.dispatch.runner.Runner`. Everything else (building a SelectionContext, ranking,
fallbacks, error reports) happens only on a miss or a failure. The selection state (engine, key function,
policy, version) is one reference, swapped whole by ``set_policy``/``refresh``: a call reads it once and
runs entirely under it.
"""

from __future__ import annotations

import collections
from time import perf_counter_ns
from typing import TYPE_CHECKING, Any, Hashable, Mapping

from layerzero.context.call_context import SelectionContext, default_is_causal
from layerzero.context.keys import KEY_ERRORS, Keyer, make_keyer
from layerzero.dispatch.overrides import active_overrides as _active_overrides
from layerzero.dispatch.overrides import kernel_override
from layerzero.dispatch.protocols import BaseDispatcher
from layerzero.dispatch.runner import Runner
from layerzero.dispatch.types import DispatchConfig, DispatchMode, DispatchResult
from layerzero.errors import NoKernelAvailableError
from layerzero.operations import ATTENTION_OPS
from layerzero.selection.engine import Explanation, Plan, SelectionEngine
from layerzero.selection.measured_ranking import default_ranking
from layerzero.selection.ranking import CallRanking, Ranking
from layerzero.validation import validate

if TYPE_CHECKING:
    from layerzero.dispatch.bound import BoundCall
    from layerzero.dispatch.circuit import CircuitBreakerManager
    from layerzero.policy import Policy
    from layerzero.registry import BackendRegistry, KernelRegistry, KernelSpec
    from layerzero.telemetry import DispatchTelemetry

__all__ = ["Dispatcher", "SelectionState", "resolve_policy"]

_ATTENTION_OPS = frozenset(ATTENTION_OPS)


class SelectionState:
    """An engine, the key function that matches its buckets, the policy it applies and a version label.
    Swapped as one reference; identity is the version a :class:`BoundCall` guards on. ``inflight`` (None
    unless the dispatcher tracks calls) holds one entry per call running under this state, so a policy
    source can wait for the calls of a replaced state to finish."""

    __slots__ = ("engine", "keyer", "key_of", "policy", "version", "inflight")

    def __init__(self, engine: SelectionEngine, policy: "Policy | None" = None, version: Any = None,
                 track_in_flight: bool = False):
        self.engine = engine
        self.keyer = make_keyer(engine.bucketers)
        #: operation -> its own key function (``keyer.by_operation``), for callers that save the keyer's frame
        self.key_of: dict[str, Keyer] = self.keyer.by_operation  # type: ignore[attr-defined]
        self.policy = policy
        self.version = version
        self.inflight: collections.deque[None] | None = collections.deque() if track_in_flight else None


def resolve_policy(config: DispatchConfig, policy: "Policy | None", registry: "KernelRegistry") -> "Policy":
    """The policy a dispatcher starts with: explicit object, then ``config.policy``, then
    ``config.policy_path``, else the empty policy (built-in priorities decide)."""
    from layerzero.policy import Policy, load_policy

    if policy is not None:
        return policy
    if config.policy is not None:
        return config.policy
    if config.policy_path:
        return load_policy(config.policy_path, registry=registry)
    return Policy.empty()


class Dispatcher(BaseDispatcher):
    """Selects and runs kernels for calls. ``ranking`` is the one strategy point (None:
    ``config.ranking``, else the default); ``catalogue`` replaces the kernel registry as the source of
    candidates and turns the policy off (static dispatch); ``track_in_flight`` counts running calls per
    selection state (hot reload's grace period)."""

    mode = DispatchMode.DYNAMIC
    #: Whether ``DispatchOrchestrator.set_policy`` applies to this dispatcher (not to a fixed catalogue).
    follows_policy = True

    def __init__(
        self, config: DispatchConfig | None = None,
        kernel_registry: "KernelRegistry | None" = None,
        backend_registry: "BackendRegistry | None" = None,
        policy: "Policy | None" = None,
        circuits: "CircuitBreakerManager | None" = None,
        telemetry: "DispatchTelemetry | None" = None,
        *,
        ranking: Ranking | None = None,
        catalogue: Any = None,
        track_in_flight: bool = False,
    ):
        from layerzero.registry import get_global_backend_registry, get_global_kernel_registry

        self.config = config = config or DispatchConfig()
        self.kernel_registry = kernel_registry or get_global_kernel_registry()
        self.backend_registry = backend_registry or get_global_backend_registry()
        if circuits is None and config.circuit_breaker_enabled:
            from layerzero.dispatch.circuit import CircuitBreakerManager

            circuits = CircuitBreakerManager.from_dispatch_config(config)
        self.circuits = circuits if config.circuit_breaker_enabled else None
        if telemetry is None and config.enable_telemetry:
            from layerzero.telemetry import DispatchTelemetry

            telemetry = DispatchTelemetry()
        self.telemetry = telemetry if config.enable_telemetry else None
        self.catalogue = catalogue
        if ranking is None:
            ranking = config.ranking if config.ranking is not None else default_ranking()
        self.ranking: Ranking = ranking
        self._rank_call = ranking.rank_call if isinstance(ranking, CallRanking) else None
        self.runner = Runner(self, config, self.kernel_registry, self.circuits, self.telemetry)
        self._run = self.runner.run  # the hot path's calls into the runner, bound once
        self._hit_path = self.runner.hit_path
        if catalogue is not None:
            self.follows_policy = False
            start = None
        else:
            start = resolve_policy(config, policy, self.kernel_registry)
        #: The selection state calls run under (read-only; replaced by ``set_policy`` and ``refresh``).
        self.state = SelectionState(self.make_engine(start), start, None, track_in_flight)
        if track_in_flight:
            self.execute = self._execute_counted  # type: ignore[method-assign]

    # ------------------------------------------------------------------ selection state
    @property
    def engine(self) -> SelectionEngine:
        return self.state.engine

    @property
    def policy(self) -> "Policy | None":
        return self.state.policy

    def make_engine(self, policy: "Policy | None") -> SelectionEngine:
        """A fresh engine (empty cache) over this dispatcher's candidates, ranking and config."""
        policy_engine = None
        if policy is not None:
            from layerzero.policy import PolicyEngine

            policy_engine = PolicyEngine(policy, self.kernel_registry)
        return SelectionEngine(
            self.catalogue if self.catalogue is not None else self.kernel_registry,
            self.backend_registry,
            policy_engine,
            cache_size=self.config.cache_size,
            enable_cache=self.config.enable_cache,
            ranking=self.ranking,
        )

    def set_policy(self, policy: "Policy", version: Any = None,
                   engine: SelectionEngine | None = None) -> SelectionState:
        """Serve ``policy`` from now on: a new state (``engine`` if given, else a fresh one), published by
        one reference assignment. Calls already running keep the state they read at their start, and
        bound calls select again. Returns the replaced state."""
        if not self.follows_policy:
            raise TypeError(f"{type(self).__name__} serves a fixed catalogue and takes no policy")
        old = self.state
        self.state = SelectionState(engine if engine is not None else self.make_engine(policy), policy,
                                    version, old.inflight is not None)
        return old

    def refresh(self) -> None:
        """Rebuild selection after the kernel catalogue changed (new kernels registered)."""
        old = self.state
        self.state = SelectionState(self.make_engine(old.policy), old.policy, old.version, old.inflight is not None)

    # ------------------------------------------------------------------ inspection
    def explain(self, operation: str, context: SelectionContext | None = None, **facts: Any) -> Explanation:
        ctx = context if context is not None else SelectionContext(operation=operation, **facts)
        return self.state.engine.explain(operation, ctx)

    def get_kernel_for_operation(self, operation: str, context: SelectionContext) -> "KernelSpec":
        return self.state.engine.select(operation, context)

    def select(self, operation: str, inputs: Mapping[str, Any], **kwargs: Any) -> "KernelSpec":
        """The kernel a call with these inputs would run first (uses and fills the cache)."""
        state = self.state
        key = state.keyer(operation, inputs, kwargs)
        plan = state.engine.lookup(key)
        if plan is None:
            plan = self._miss(state, key, operation, inputs, None, kwargs)
        return plan.primary

    def in_flight(self) -> int:
        """Calls running under the current selection state (0 unless the dispatcher tracks them)."""
        inflight = self.state.inflight
        return 0 if inflight is None else len(inflight)

    # ------------------------------------------------------------------ calls
    def bind(self, operation: str) -> "BoundCall":
        """The fast path for one call site of ``operation``: see :class:`~layerzero.dispatch.bound.BoundCall`."""
        from layerzero.dispatch.bound import BoundCall

        return BoundCall(self, operation)

    def dispatch(
        self,
        operation: str,
        inputs: Mapping[str, Any],
        context: SelectionContext | None = None,
        **kwargs: Any,
    ) -> DispatchResult:
        return self.execute(operation, inputs, context, kwargs, True)

    def call(self, operation: str, inputs: Mapping[str, Any], kwargs: dict[str, Any]) -> Any:
        """The output alone: no DispatchResult or DispatchTiming objects; telemetry, breakers and fallbacks
        work as in ``dispatch``."""
        return self.execute(operation, inputs, None, kwargs, False)

    def execute(
        self,
        operation: str,
        inputs: Mapping[str, Any],
        context: SelectionContext | None,
        kwargs: dict[str, Any],
        want_result: bool,
        state: SelectionState | None = None,
    ) -> Any:
        """``dispatch`` (``want_result`` True) or ``call`` (False) with the keyword arguments as one dict:
        the entry point of routers that already hold that dict (the orchestrator), saving a repack.
        ``state`` is the selection state to run under (default: the current one)."""
        # The hot path. Kept flat on purpose: every attribute lookup and call here costs ~50-100 ns. A
        # dispatcher that counts calls in flight replaces this method on the instance by _execute_counted,
        # which passes the state it registered the call under; so the plain path pays nothing for counting.
        t0 = perf_counter_ns()
        if state is None:
            state = self.state  # read once: the whole call runs under one policy version
        if operation in _ATTENTION_OPS and "is_causal" not in kwargs:
            # "attention.causal"/"prefill" are causal by name; a context can make other attention causal.
            kwargs = {**kwargs, "is_causal": default_is_causal(operation) or (context is not None and context.is_causal)}
        overrides = _active_overrides()
        if overrides:  # inside a use_kernels() block
            forced = kernel_override(overrides, operation)
            if forced is not None:
                return self._run_forced(forced, operation, inputs, context, kwargs, t0, want_result)
        engine = state.engine
        if context is not None:
            key = (operation, engine.bucket_context(context))
        else:
            # The operation's own key function called directly (one frame less than the keyer, with the same
            # fallback to the generic key when it does not fit the arguments).
            key_of = state.key_of.get(operation)
            if key_of is None:
                key = state.keyer(operation, inputs, kwargs)
            else:
                try:
                    key = key_of(operation, inputs, kwargs)
                except KEY_ERRORS:
                    key = state.keyer(operation, inputs, kwargs)
        plan = engine.lookup(key)
        if plan is None:
            plan = self._miss(state, key, operation, inputs, context, kwargs)
            return self._run(plan, False, operation, inputs, kwargs, t0, want_result, key)
        return self._hit_path(plan)(inputs, kwargs, t0, key, want_result)  # a cached plan is this operation's

    def _execute_counted(self, operation: str, inputs: Mapping[str, Any], context: SelectionContext | None,
                         kwargs: dict[str, Any], want_result: bool, state: SelectionState | None = None) -> Any:
        """``execute`` with the call counted in flight under its state for the whole run (the instance's
        ``execute`` when the dispatcher tracks calls in flight). ``state`` is there for the signature only:
        the call runs under the current state, the one it is registered under."""
        state = self._enter(self.state)
        try:
            return Dispatcher.execute(self, operation, inputs, context, kwargs, want_result, state)
        finally:
            state.inflight.pop()  # type: ignore[union-attr]

    # ------------------------------------------------------------------ internals
    def _enter(self, state: SelectionState) -> SelectionState:
        """Register a call under the current state, then confirm it is still current: a swap between the
        read and the registration would otherwise let the call run on a state its grace wait cannot see."""
        while True:
            inflight = state.inflight
            inflight.append(None)  # type: ignore[union-attr]
            if self.state is state:
                return state
            inflight.pop()  # type: ignore[union-attr]
            state = self.state

    def _miss(
        self,
        state: SelectionState,
        key: Hashable,
        operation: str,
        inputs: Mapping[str, Any],
        context: SelectionContext | None,
        kwargs: Mapping[str, Any],
    ) -> Plan:
        """Cache miss: build the full context, rank, cache the plan. A catalogue that changed since the
        engine was built (kernels registered at run time) is picked up here."""
        validate(operation, inputs, kwargs)  # the caller's mistakes never reach a kernel or a breaker
        engine = state.engine
        if engine.is_stale:
            self.refresh()
            state = self.state
            engine = state.engine
            key = state.keyer(operation, inputs, kwargs) if context is None else (operation, engine.bucket_context(context))
        engine.misses += 1
        ctx = context if context is not None else SelectionContext.from_inputs(operation, inputs, **kwargs)
        if ctx.operation != operation:
            ctx = ctx.replace(operation=operation)
        plan = engine.plan(operation, ctx)
        cacheable = True
        if self._rank_call is not None:  # a ranking that settles the bucket from this very call
            plan, cacheable = self._rank_call(plan, key, operation, inputs, kwargs)
        plan.primary.impl  # resolve the lazy import now, not inside the timed kernel call
        if cacheable:
            engine.store(key, plan)
            if self.telemetry is not None:
                self.telemetry.record_selection(operation, plan.primary.kernel_id, ctx)
        return plan

    def _run_forced(self, kernel: str, operation: str, inputs: Mapping[str, Any], context: SelectionContext | None,
                    kwargs: Mapping[str, Any], t0: int, want_result: bool) -> Any:
        """A call inside ``use_kernels``: that kernel (its reference as the fallback), or an error saying why
        it cannot run this call. Not cached: the block is scoped, the cache is not."""
        validate(operation, inputs, kwargs)
        spec = self.kernel_registry.get(kernel)
        ctx = context if context is not None else SelectionContext.from_inputs(operation, inputs, **kwargs)
        reasons = spec.check(ctx.replace(operation=operation), self.backend_registry)
        if reasons:
            raise NoKernelAvailableError(operation, [(spec.kernel_id, reasons)], ctx)
        ref = self.kernel_registry.reference_for(operation)
        kernels = (spec,) if ref is None or ref is spec else (spec, ref)
        return self.runner.run(Plan(operation, kernels, ctx), True, operation, inputs, kwargs, t0, want_result)
