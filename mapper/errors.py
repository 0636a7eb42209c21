"""The MapperError tree: every error weight-mapper raises.

MapperError
├── RuleFileError (ValueError)        a rule file is malformed; lists every issue at once
│   └── MatchTimeoutError             a rule's pattern ran past the match time bound on a name
├── OperationError (ValueError)       a tensor operation cannot apply to a shape or dtype
├── PlanError (ValueError)            a plan has error-level problems; carries them
├── SourceError (OSError)
│   ├── SourceNotFoundError (FileNotFoundError)   no file or checkpoint at the path
│   └── CorruptSourceError                        missing index, truncated data, bad header
├── TargetError (LookupError)         a target object or variable cannot be used
│   └── OutputError                   the output cannot be written: exists, no directory, read-only, disk full
└── ApplyError (RuntimeError)         applying a plan failed; the target was left unchanged
    └── PartialApplyError             applying failed part-way and the target is partly assigned; names both parts
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


class MapperError(Exception):
    """Root of every error raised by weight-mapper.

    Example:
        >>> try:
        ...     raise SourceNotFoundError("no checkpoint at 'x'", path="x")
        ... except MapperError as error:
        ...     print(type(error).__name__)
        SourceNotFoundError
    """


@dataclass(frozen=True)
class RuleIssue:
    """One problem found in a rule file: where it is, what is wrong and how to fix it.

    Example:
        >>> print(RuleIssue("r.toml", "unknown key 'mtach'", rule=2, field="mtach",
        ...                 hint="did you mean 'match'?"))
        r.toml: rule 2, field 'mtach': unknown key 'mtach' (did you mean 'match'?)
    """

    file: str
    message: str
    rule: int | None = None
    rule_name: str | None = None
    field: str | None = None
    hint: str | None = None
    line: int | None = None
    column: int | None = None
    section: str = "rule"

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}" + (f":{self.column}" if self.column is not None else "")
        parts = []
        if self.rule is not None:
            parts.append(f"{self.section} {self.rule}" + (f" ({self.rule_name!r})" if self.rule_name else ""))
        if self.field:
            parts.append(f"field {self.field!r}")
        location = f"{where}: " + (", ".join(parts) + ": " if parts else "")
        return location + self.message + (f" ({self.hint})" if self.hint else "")


class RuleFileError(MapperError, ValueError):
    """A rule file could not be read or validated; ``issues`` lists every problem found.

    Example:
        >>> error = RuleFileError([RuleIssue("r.toml", "expected '='", line=3, column=7)])
        >>> print(error)
        1 problem in rule file r.toml:
          r.toml:3:7: expected '='
    """

    def __init__(self, issues: Sequence[RuleIssue]) -> None:
        self.issues = tuple(issues)
        files = sorted({issue.file for issue in self.issues})
        count = len(self.issues)
        head = f"{count} problem{'s' if count != 1 else ''} in rule file {', '.join(files)}:"
        super().__init__("\n".join([head, *(f"  {issue}" for issue in self.issues)]))


class MatchTimeoutError(RuleFileError):
    """A rule's pattern took longer than the match time bound on one name: a pattern that backtracks without end.

    ``rule`` is the rule or keep it came from (a ``RuleRef``, or None for a pattern outside a rule file),
    ``name`` the name it was matching and ``timeout`` the bound in seconds.

    Example:
        >>> issue = RuleIssue("r.toml", "pattern '(a|aa)+' ran past 0.1 s", rule=1, field="match")
        >>> error = MatchTimeoutError(issue, rule=None, name="aaab", timeout=0.1)
        >>> isinstance(error, RuleFileError), error.timeout
        (True, 0.1)
    """

    def __init__(self, issue: RuleIssue, *, rule: object, name: str, timeout: float) -> None:
        super().__init__([issue])
        self.rule = rule
        self.name = name
        self.timeout = timeout


class OperationError(MapperError, ValueError):
    """A tensor operation does not fit the shape or dtype it is given.

    Example:
        >>> str(OperationError("cannot reshape [6] into [4]", operation="reshape"))
        'cannot reshape [6] into [4]'
    """

    def __init__(self, message: str, *, operation: str) -> None:
        super().__init__(message)
        self.operation = operation


class PlanError(MapperError, ValueError):
    """A plan has error-level problems; ``problems`` holds them and ``plan`` the whole plan.

    Example:
        >>> str(PlanError("2 errors in plan", problems=(), plan=None))
        '2 errors in plan'
    """

    def __init__(self, message: str, *, problems: Sequence[object], plan: object) -> None:
        super().__init__(message)
        self.problems = tuple(problems)
        self.plan = plan

    @classmethod
    def from_plan(cls, plan: Any, *, shown: int = 5, executor: bool = False) -> PlanError:
        """The error for refusing to carry out ``plan`` (a ``mapper.plan.Plan``): its first errors, and how many.

        Callers that refuse before doing anything (the API, the CLI) use the short form; the executor, handed a
        plan with errors directly, names the source and target and says how to fix it (``executor=True``).

        Example:
            >>> from mapper.plan import Plan
            >>> str(PlanError.from_plan(Plan(rule_files=("r.toml",), source="s", target="t", namespace="path")))
            'the plan from r.toml has 0 errors; nothing was changed'
        """
        errors = plan.errors
        listed = "".join(f"\n  - {problem.message}" for problem in errors[:shown])
        more = f"\n  ... and {len(errors) - shown} more" if len(errors) > shown else ""
        count = f"{len(errors)} error{'s' if len(errors) != 1 else ''}"
        if executor:
            message = (
                f"the plan from {plan.source} to {plan.target} has {count}, so nothing was applied:{listed}{more}\n"
                "fix the rule file (see the plan report) and plan again"
            )
        else:
            message = f"the plan from {', '.join(plan.rule_files)} has {count}; nothing was changed{listed}{more}"
        return cls(message, problems=errors, plan=plan)


class SourceError(MapperError, OSError):
    """A source of tensors cannot be opened or read.

    Example:
        >>> SourceError("cannot read", path="a.ckpt").path
        'a.ckpt'
    """

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path

    def __str__(self) -> str:
        return str(self.args[0])


class SourceNotFoundError(SourceError, FileNotFoundError):
    """No file, directory or checkpoint exists at the given path.

    Example:
        >>> isinstance(SourceNotFoundError("missing", path="x"), FileNotFoundError)
        True
    """


class CorruptSourceError(SourceError):
    """The source exists but is incomplete or damaged (missing index, truncated data).

    Example:
        >>> str(CorruptSourceError("index file missing", path="x"))
        'index file missing'
    """


class TargetError(MapperError, LookupError):
    """A target object cannot be turned into variables, or a named variable is missing.

    Example:
        >>> str(TargetError("no variable 'head/kernel'"))
        "no variable 'head/kernel'"
    """

    def __str__(self) -> str:
        return str(self.args[0])


class ApplyError(MapperError, RuntimeError):
    """Applying a plan failed and the target is unchanged (nothing was assigned, or everything was restored).

    When the target is left partly assigned, the error is the subclass PartialApplyError.

    Example:
        >>> str(ApplyError("read failed"))
        'read failed'
    """


class OutputError(TargetError):
    """The output cannot be written; ``path`` is the output, ``errno`` the system's error number when one caused it.

    Raised for an output that exists (without overwrite), a missing directory, a directory given as the output, a
    path that could not be read back, and for write faults: a read-only directory, a full disk, a file-size limit.
    Nothing is left at the output when it is raised: an existing output keeps its contents.

    Example:
        >>> import errno
        >>> error = OutputError("cannot write out/ckpt: no space left on device", path="out/ckpt", errno=errno.ENOSPC)
        >>> error.path, error.errno == errno.ENOSPC, isinstance(error, TargetError)
        ('out/ckpt', True, True)
    """

    def __init__(self, message: str, *, path: str | os.PathLike[str], errno: int | None = None) -> None:
        super().__init__(message)
        self.path = os.fspath(path)
        self.errno = errno


class PartialApplyError(ApplyError):
    """Applying failed part-way and the target is partly assigned: ``assigned`` were given their new values, ``not_assigned`` not.

    Raised when a failure in the assignment pass could not be undone: with ``rollback="verify"`` a source that
    changed after it was verified (or a fault such as EIO), with ``rollback="off"`` any failure, with
    ``rollback="memory"`` a restore that failed too. Both lists hold target names, in the plan's order; reload the
    model (or apply again once the cause is fixed).

    Example:
        >>> error = PartialApplyError("reading failed", assigned=["a"], not_assigned=["b", "c"])
        >>> error.assigned, error.not_assigned, isinstance(error, ApplyError)
        (('a',), ('b', 'c'), True)
    """

    def __init__(self, message: str, *, assigned: Sequence[str], not_assigned: Sequence[str]) -> None:
        super().__init__(message)
        self.assigned = tuple(assigned)
        self.not_assigned = tuple(not_assigned)
