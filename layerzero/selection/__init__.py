"""Selection: the engine that ranks the eligible kernels of a call into a plan.

It sits beside the dispatcher (it reads registries and policies); the call facts it ranks on live in
:mod:`layerzero.context` and are re-exported here for convenience.
"""

from layerzero.context import CONTEXT_FIELDS, SelectionContext, dtype_name
from layerzero.selection.engine import CandidateReport, Explanation, Plan, SelectionEngine

__all__ = ["CONTEXT_FIELDS", "CandidateReport", "Explanation", "Plan", "SelectionContext", "SelectionEngine", "dtype_name"]
