"""Autotuning: measure the eligible kernels for a shape bucket once, keep the fastest that conforms.

``AutotuneDispatcher`` (``DispatchMode.AUTOTUNE``) tunes on the first call of each bucket; ``tune()``
sweeps shapes ahead of time (the ``layerzero tune`` command) and fills the same persistent cache. Every
timing goes through :func:`layerzero.tuning.measure.measure` (maintained harnesses, IQR noise flag;
the function is not re-exported here, where it would shadow its module).
"""

from layerzero.tuning.cache import TuneEntry, TuningCache, default_cache_path, library_versions
from layerzero.tuning.measure import (
    NOISE_THRESHOLD,
    Timing,
    conformance_problem,
    max_error,
    time_call,
    unsafe_to_time,
)

__all__ = [
    "NOISE_THRESHOLD",
    "Timing",
    "TuneEntry",
    "TuningCache",
    "conformance_problem",
    "default_cache_path",
    "library_versions",
    "max_error",
    "time_call",
    "unsafe_to_time",
]
