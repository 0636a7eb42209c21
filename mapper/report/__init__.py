"""Plan reports: compact text for terminals, Markdown for pull requests, JSON for machines; strings only."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from mapper.errors import MapperError
from mapper.plan import Plan
from mapper.report.json import REPORT_FORMAT, REPORT_VERSION, render_json
from mapper.report.markdown import render_markdown
from mapper.report.text import render_text

__all__ = [
    "REPORT_FORMAT",
    "REPORT_VERSION",
    "ReportFormat",
    "render",
    "render_json",
    "render_markdown",
    "render_text",
]

ReportFormat = Literal["text", "markdown", "json"]


def render(plan: Plan, format: ReportFormat = "text", **options: Any) -> str:
    """Render a plan in ``format``: ``text`` (which takes ``color``, ``width`` and ``verbose``), ``markdown`` or ``json``.

    Args:
        plan: The plan to describe.
        format: ``"text"``, ``"markdown"`` or ``"json"``.
        **options: Keyword options of the chosen renderer.

    Returns:
        The report as a string.

    Raises:
        MapperError: ``format`` is not one of the three.

    Example:
        >>> plan = Plan(("r.toml",), "old.ckpt", "model", "path")
        >>> render(plan, "text", width=60).splitlines()[0]
        'Plan OK: 0 mapped'
        >>> render(plan, "json") == render_json(plan)
        True
    """
    renderers: dict[str, Callable[..., str]] = {
        "text": render_text,
        "markdown": render_markdown,
        "json": render_json,
    }
    renderer = renderers.get(format)
    if renderer is None:
        raise MapperError(f"unknown report format {format!r}; choose one of 'text', 'markdown' or 'json'")
    return renderer(plan, **options)
