"""weight-mapper: declarative rule files that move weights from checkpoints into Keras and TensorFlow models."""

from mapper.api import apply, convert, make_plan, transfer
from mapper.authoring.suggest import Suggestion, suggest_rules
from mapper.errors import (
    ApplyError,
    CorruptSourceError,
    MapperError,
    MatchTimeoutError,
    OperationError,
    OutputError,
    PartialApplyError,
    PlanError,
    RuleFileError,
    RuleIssue,
    SourceError,
    SourceNotFoundError,
    TargetError,
)
from mapper.plan import Assignment, Plan, Problem, ProblemKind, RuleRef, Severity, Skip, SkipKind, TensorEntry
from mapper.plan.planner import build_plan
from mapper.rules import RuleSet, load_rules, parse_rules
from mapper.specs import SourceSet, TargetMap, TensorSpec, VariableMap

__version__ = "0.1.0"

__all__ = [
    "apply",
    "ApplyError",
    "Assignment",
    "build_plan",
    "convert",
    "CorruptSourceError",
    "load_rules",
    "make_plan",
    "MapperError",
    "MatchTimeoutError",
    "OperationError",
    "OutputError",
    "parse_rules",
    "PartialApplyError",
    "Plan",
    "PlanError",
    "Problem",
    "ProblemKind",
    "RuleFileError",
    "RuleIssue",
    "RuleRef",
    "RuleSet",
    "Severity",
    "Skip",
    "SkipKind",
    "SourceError",
    "SourceNotFoundError",
    "SourceSet",
    "suggest_rules",
    "Suggestion",
    "TargetError",
    "TargetMap",
    "TensorEntry",
    "TensorSpec",
    "transfer",
    "VariableMap",
]
