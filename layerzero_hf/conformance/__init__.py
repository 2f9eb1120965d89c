"""In-context conformance: verify kernels on the arguments real models pass, not only on a synthetic grid.

``record_calls(model, input_ids)`` runs a model patched by LayerZero (attention included) through a
prefill and a few decode steps with a recorder in front of its orchestrator and returns every distinct
dispatched call, tensors copied with their exact layout. ``replay(calls)`` runs each call on every kernel
the dispatcher finds eligible and compares with the fp32 reference. ``save_calls``/``load_calls`` move
recordings between processes or machines. See docs/conformance.md.
"""

from layerzero_hf.conformance.recording import (
    SCENARIOS,
    CallRecorder,
    RecordedCall,
    call_signature,
    clone_exact,
    record_calls,
    record_scenarios,
)
from layerzero_hf.conformance.replay import (
    ConformanceReport,
    KernelResult,
    compare_outputs,
    replay,
)
from layerzero_hf.conformance.storage import load_calls, save_calls

__all__ = [
    "SCENARIOS",
    "CallRecorder",
    "ConformanceReport",
    "KernelResult",
    "RecordedCall",
    "call_signature",
    "clone_exact",
    "compare_outputs",
    "load_calls",
    "record_calls",
    "record_scenarios",
    "replay",
    "save_calls",
]
