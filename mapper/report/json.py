"""The JSON report: the verdict and counts beside the plan's own JSON, for machines."""

from __future__ import annotations

import json

from mapper.plan import Plan
from mapper.report.rows import verdict

REPORT_FORMAT = "weight-mapper report"
REPORT_VERSION = 1


def render_json(plan: Plan) -> str:
    """Render a plan as a JSON document for machines.

    Schema (``version`` 1)::

        {
          "format": "weight-mapper report",
          "version": 1,
          "ok": true,                       # no error-level problems: the plan can be applied
          "verdict": "OK",                  # or "FAILED with 3 errors"
          "summary": {"mapped": 199, "transformed": 96, "skipped_by_rule": 4, "skipped_by_guard": 0,
                      "kept_by_rule": 0, "unused": 0, "unfilled": 0, "errors": 0, "warnings": 1},
          "plan": {...}                     # exactly Plan.to_json(): Plan.from_json(json.dumps(doc["plan"]))
        }                                   # gives back an equal plan

    ``summary`` is ``Plan.counts()``; new keys may be added within a version, never removed.

    Args:
        plan: The plan to describe.

    Returns:
        Indented JSON, without a trailing newline.

    Example:
        >>> plan = Plan(("r.toml",), "old.ckpt", "model", "path")
        >>> document = json.loads(render_json(plan))
        >>> document["verdict"], document["summary"]["mapped"], Plan.from_json(json.dumps(document["plan"])) == plan
        ('OK', 0, True)
    """
    document = {
        "format": REPORT_FORMAT,
        "version": REPORT_VERSION,
        "ok": plan.ok,
        "verdict": verdict(plan),
        "summary": plan.counts(),
        "plan": json.loads(plan.to_json(indent=None)),
    }
    return json.dumps(document, indent=2, ensure_ascii=False)


__all__ = ["REPORT_FORMAT", "REPORT_VERSION", "render_json"]
