"""The plan: what goes where (data), how rule patterns find names (matching), and the pure planner."""

from mapper.plan.model import (
    PLAN_FORMAT,
    Assignment,
    Join,
    JoinMember,
    NamedSource,
    Plan,
    Problem,
    ProblemKind,
    Severity,
    Skip,
    SkipKind,
    TensorEntry,
)
from mapper.rules.ref import RuleRef

__all__ = [
    "PLAN_FORMAT",
    "Join",
    "JoinMember",
    "NamedSource",
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
