"""Rule files, format version 1: the schema (model), its operations, name templates, loading and issue messages."""

from __future__ import annotations

from mapper.rules.common import ParamValue
from mapper.rules.issues import RULES_FORMAT
from mapper.rules.loading import load_rules, parse_param
from mapper.rules.model import (
    LINT_CODES,
    Example,
    Guard,
    Keep,
    Policies,
    Rule,
    RuleSet,
    TargetSection,
    parse_rules,
    validate_rules,
)
from mapper.rules.operations import (
    OPERATION_SPECS,
    CastSpec,
    CombineSpec,
    NeedsTargetError,
    OperationSpec,
    RearrangeSpec,
    ReshapeSpec,
    SliceSpec,
    SplitSpec,
    TransposeSpec,
    resolve_operations,
)
from mapper.rules.ref import RuleRef
from mapper.rules.templates import TemplateError

__all__ = [
    "LINT_CODES",
    "OPERATION_SPECS",
    "RULES_FORMAT",
    "CastSpec",
    "CombineSpec",
    "Example",
    "Guard",
    "Keep",
    "NeedsTargetError",
    "OperationSpec",
    "ParamValue",
    "Policies",
    "RearrangeSpec",
    "ReshapeSpec",
    "Rule",
    "RuleRef",
    "RuleSet",
    "SliceSpec",
    "SplitSpec",
    "TargetSection",
    "TemplateError",
    "TransposeSpec",
    "load_rules",
    "parse_param",
    "parse_rules",
    "resolve_operations",
    "validate_rules",
]
