"""Prometheus export of dispatch telemetry (optional extra ``layerzero-dispatch[prometheus]``).

A custom collector reads one ``snapshot()`` per scrape, so exporting costs nothing on the dispatch path
and the exported numbers are the same ones ``snapshot()`` shows. ``prometheus_client`` is imported when
an exporter is created, never by ``import layerzero``.

Telemetry is the foundation floor, below the dispatcher that owns circuit breakers and hot reload, so
the exporter reads them through the small protocols below; the dispatcher's ``CircuitBreakerManager``
and ``HotReloadDispatcher`` satisfy them structurally, without this module importing them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator, Mapping, Protocol

if TYPE_CHECKING:
    from layerzero.telemetry.recorder import DispatchTelemetry

__all__ = ["CIRCUIT_STATE_VALUES", "CircuitReading", "CircuitSource", "PrometheusExporter", "ReloadSource"]


class _Named(Protocol):
    @property
    def name(self) -> str: ...


class CircuitReading(Protocol):
    """One breaker as exported: its state (an enum named CLOSED, HALF_OPEN or OPEN) and how often it opened."""

    @property
    def state(self) -> _Named: ...

    @property
    def times_opened(self) -> int: ...


class CircuitSource(Protocol):
    """Where circuit states come from (``CircuitBreakerManager``): a reading per kernel id, per scrape."""

    def get_all_stats(self) -> Mapping[str, CircuitReading]: ...


class _ReloadStats(Protocol):
    @property
    def current_version(self) -> int | None: ...

    @property
    def total_reloads(self) -> int: ...

    @property
    def failed_reloads(self) -> int: ...


class ReloadSource(Protocol):
    """A hot-reloading dispatcher (``HotReloadDispatcher``): its active config version and reload counts."""

    @property
    def stats(self) -> _ReloadStats: ...

CIRCUIT_STATE_VALUES = {"CLOSED": 0, "HALF_OPEN": 1, "OPEN": 2}


def _client():
    try:
        import prometheus_client
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            f"PrometheusExporter needs prometheus_client ({e}); install it with: pip install 'layerzero-dispatch[prometheus]'"
        ) from e
    return prometheus_client, CounterMetricFamily, GaugeMetricFamily


class PrometheusExporter:
    """Expose a ``DispatchTelemetry`` (and optionally circuit breakers and a hot-reload dispatcher's
    config version) as Prometheus metrics named ``<namespace>_...``.

    ``registry=None`` registers on prometheus_client's default registry (what ``start_http_server``
    serves); pass a ``CollectorRegistry`` to keep it separate (tests, several dispatchers)."""

    def __init__(
        self,
        telemetry: "DispatchTelemetry",
        registry: Any = None,
        circuits: CircuitSource | None = None,
        hot_reload: ReloadSource | None = None,
        namespace: str = "layerzero",
    ):
        prometheus_client, _, _ = _client()
        self.telemetry = telemetry
        self.circuits = circuits
        self.hot_reload = hot_reload
        self.namespace = namespace
        self.registry = registry if registry is not None else prometheus_client.REGISTRY
        self.registry.register(self)

    def collect(self) -> Iterator[Any]:
        _, Counter, Gauge = _client()
        ns = self.namespace
        snap = self.telemetry.snapshot()
        calls = Counter(f"{ns}_dispatch", "Completed dispatches", labels=["operation", "kernel"])
        hits = Counter(f"{ns}_selection_cache_hits", "Dispatches served from the selection cache",
                       labels=["operation", "kernel"])
        fallbacks = Counter(f"{ns}_fallback", "Dispatches served by a fallback kernel", labels=["operation", "kernel"])
        failures = Counter(f"{ns}_kernel_failures", "Failed kernel attempts (raised or bad output)",
                           labels=["operation"])
        for op, o in snap.operations.items():
            for kid, n in o.kernels.items():
                calls.add_metric([op, kid], n)
            failures.add_metric([op], o.failures)
        for kid, k in snap.per_kernel.items():
            # Per-kernel hit/fallback counts are not split by operation in the snapshot; label "*".
            hits.add_metric(["*", kid], k.cache_hits)
            fallbacks.add_metric(["*", kid], k.fallback_calls)
        yield calls
        yield hits
        yield fallbacks
        yield failures
        kfail = Counter(f"{ns}_kernel_failures_by_kernel", "Failed attempts per kernel", labels=["kernel"])
        for kid, k in snap.per_kernel.items():
            kfail.add_metric([kid], k.failures)
        yield kfail
        lat = Gauge(f"{ns}_dispatch_latency_us", "Dispatch-path latency over recent calls (microseconds)",
                    labels=["kernel", "quantile"])
        for q, v in (("0.5", snap.p50_latency_us), ("0.99", snap.p99_latency_us)):
            if v is not None:
                lat.add_metric(["*", q], v)
        for kid, k in snap.per_kernel.items():
            for q, v in (("0.5", k.p50_us), ("0.99", k.p99_us)):
                if v is not None:
                    lat.add_metric([kid, q], v)
        yield lat
        yield Gauge(f"{ns}_selection_cache_hit_ratio", "Share of dispatches served from the selection cache",
                    value=snap.cache_hit_rate)
        yield Counter(f"{ns}_selection_changes", "Times the kernel chosen for an operation changed",
                      value=snap.selection_changes)
        if self.circuits is not None:
            state = Gauge(f"{ns}_circuit_state", "Circuit breaker state (0 closed, 1 half-open, 2 open)",
                          labels=["kernel"])
            opened = Counter(f"{ns}_circuit_opened", "Times a circuit opened", labels=["kernel"])
            for kid, s in sorted(self.circuits.get_all_stats().items()):
                state.add_metric([kid], CIRCUIT_STATE_VALUES[s.state.name])
                opened.add_metric([kid], s.times_opened)
            yield state
            yield opened
        if self.hot_reload is not None:
            st = self.hot_reload.stats
            yield Gauge(f"{ns}_config_version", "Active hot-reload config version", value=st.current_version or 0)
            yield Counter(f"{ns}_config_reloads", "Successful config reloads", value=st.total_reloads)
            yield Counter(f"{ns}_config_reload_failures", "Rejected config reloads", value=st.failed_reloads)

    def describe(self) -> list[Any]:
        # Returning nothing makes the registry skip calling collect() at registration time.
        return []

    def generate_latest(self) -> bytes:
        """The text exposition of this exporter's registry (what a /metrics endpoint returns)."""
        prometheus_client, _, _ = _client()
        return prometheus_client.generate_latest(self.registry)

    def unregister(self) -> None:
        self.registry.unregister(self)
