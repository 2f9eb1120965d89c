"""Selection: the engine that ranks the eligible kernels of a call into a plan, and the rankings it uses.

It sits beside the dispatcher (it reads registries and policies); the call facts it ranks on live in
:mod:`layerzero.context` and are re-exported here for convenience.
"""

from layerzero.context import CONTEXT_FIELDS, SelectionContext, dtype_name
from layerzero.selection.engine import CandidateReport, Explanation, Plan, SelectionEngine
from layerzero.selection.ranking import (
    Candidate,
    CallRanking,
    PriorityRanking,
    RankedKernel,
    Ranking,
    RegistrationOrder,
)
from layerzero.selection.measured_ranking import MeasuredRanking, default_ranking

__all__ = [
    "CONTEXT_FIELDS",
    "CallRanking",
    "Candidate",
    "CandidateReport",
    "Explanation",
    "MeasuredRanking",
    "Plan",
    "PriorityRanking",
    "RankedKernel",
    "Ranking",
    "RegistrationOrder",
    "SelectionContext",
    "SelectionEngine",
    "default_ranking",
    "dtype_name",
]
