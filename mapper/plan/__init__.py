"""The plan: what goes where (data), how rule patterns find names (matching), and the pure planner."""

from mapper.plan.model import (
    PLAN_FORMAT,
    Assignment,
    Plan,
    Problem,
    ProblemKind,
    RuleRef,
    Severity,
    Skip,
    SkipKind,
    TensorEntry,
)

__all__ = [
    "PLAN_FORMAT",
    "Assignment",
    "Plan",
    "Problem",
    "ProblemKind",
    "RuleRef",
    "Severity",
    "Skip",
    "SkipKind",
    "TensorEntry",
]
