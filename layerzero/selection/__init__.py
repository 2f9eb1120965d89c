"""Selection: the call context, bucketing, cache keys and the ranking engine."""

from layerzero.selection.context import CONTEXT_FIELDS, SelectionContext, dtype_name
from layerzero.selection.engine import CandidateReport, Explanation, Plan, SelectionEngine

__all__ = ["CONTEXT_FIELDS", "CandidateReport", "Explanation", "Plan", "SelectionContext", "SelectionEngine", "dtype_name"]
