"""Tests for the public surface: mapper.__all__, module docstrings, and importing the pure core without TensorFlow."""

from __future__ import annotations

import ast
import enum
import inspect
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import mapper

PACKAGE = Path(mapper.__file__).parent
MODULES = sorted(path.relative_to(PACKAGE.parent) for path in PACKAGE.rglob("*.py"))
PUBLIC_MODULES = [
    path for path in MODULES if not any(part.startswith("_") and part != "__init__.py" for part in path.parts)
]


def test_all_is_sorted_case_insensitively_without_duplicates() -> None:
    assert mapper.__all__ == sorted(mapper.__all__, key=str.lower)
    assert len(set(mapper.__all__)) == len(mapper.__all__)


@pytest.mark.parametrize("name", mapper.__all__)
def test_every_name_in_all_exists_and_is_documented(name: str) -> None:
    value = getattr(mapper, name)
    assert not name.startswith("_")
    doc = inspect.getdoc(value)
    assert doc, f"mapper.{name} has no docstring"
    # Functions and classes show how they are used; exceptions and enums are explained by their docstring alone.
    if inspect.isfunction(value) or (inspect.isclass(value) and not issubclass(value, (BaseException, enum.Enum))):
        assert "Example:" in doc, f"mapper.{name}'s docstring has no Example: section"


@pytest.mark.parametrize(
    "module", ["mapper.errors", "mapper.ops", "mapper.plan", "mapper.plan.planner", "mapper.rules"]
)
def test_submodule_all_names_exist(module: str) -> None:
    imported = __import__(module, fromlist=["__all__"])
    for name in getattr(imported, "__all__", ()):
        assert hasattr(imported, name), f"{module}.__all__ lists {name!r}, which it does not define"


def test_package_re_exports_the_core() -> None:
    for name in (
        "build_plan",
        "load_rules",
        "parse_rules",
        "Plan",
        "RuleSet",
        "TensorSpec",
        "VariableMap",
        "TargetMap",
    ):
        assert name in mapper.__all__
    assert mapper.build_plan.__module__ == "mapper.plan.planner"
    assert mapper.load_rules.__module__ == "mapper.rules.loading"


@pytest.mark.parametrize("path", PUBLIC_MODULES, ids=[str(path) for path in PUBLIC_MODULES])
def test_every_public_module_has_a_one_line_summary_docstring(path: Path) -> None:
    # Read with ast rather than importing: some modules import TensorFlow.
    docstring = ast.get_docstring(ast.parse((PACKAGE.parent / path).read_text(encoding="utf-8")), clean=False)
    assert docstring, f"{path} has no module docstring"
    lines = docstring.splitlines()
    summary = lines[0]
    assert summary.strip() == summary and summary, f"{path}: the docstring must start with its summary line"
    assert summary.endswith("."), f"{path}: the summary line should be a sentence ending in '.'"
    assert len(lines) == 1 or not lines[1].strip(), f"{path}: the summary must fit on one line, then a blank line"


CORE_IMPORT = (
    "import mapper, mapper.rules, mapper.plan.planner, mapper.plan; import sys; assert 'tensorflow' not in sys.modules"
)


def test_core_imports_without_loading_tensorflow() -> None:
    result = subprocess.run(
        [sys.executable, "-c", CORE_IMPORT], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr


def test_core_works_with_tensorflow_unimportable() -> None:
    # None in sys.modules makes `import tensorflow` raise ImportError, as if it were not installed.
    script = textwrap.dedent(
        """
        import sys
        sys.modules["tensorflow"] = None
        sys.modules["keras"] = None
        import mapper
        from mapper import build_plan, parse_rules, Plan, TargetMap, TensorSpec, VariableMap
        from mapper.ops import Transpose, apply_numpy, infer_all
        rules = parse_rules('format = 1\\n[[rules]]\\nmatch = "(?P<n>.*)"\\ntarget = "{n}"\\nops = [{ transpose = [1, 0] }]\\n')
        plan = build_plan(
            rules,
            VariableMap([TensorSpec("w", (2, 3), "float32")]),
            TargetMap(VariableMap([TensorSpec("w", (3, 2), "float32")])),
        )
        assert plan.ok, plan.problems
        assert Plan.from_json(plan.to_json()) == plan
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
