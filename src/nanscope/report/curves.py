"""The ``nanscope.curves/1`` report of ``nanscope doctor``: a frozen value, its JSON form and its text form.

JSON: ``{"schema", "format", "source", "series", "verdict", "since", "axis", "findings", "suggestions",
"notes"}``; non-finite numbers are written as the strings ``"nan"``, ``"inf"``, ``"-inf"``. See
``docs/curves.md``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from nanscope.report.json import to_plain
from nanscope.report.model import Evidence

__all__ = ["SCHEMA", "CurvesReport", "SeriesSummary", "dumps", "render_text", "to_dict"]

SCHEMA = "nanscope.curves/1"


@dataclass(frozen=True, slots=True)
class SeriesSummary:
    name: str
    axis: str
    role: str | None  # train_loss, val_loss, lr, or None (read, not used)
    points: int
    first: float
    last: float
    min: float | None
    nonfinite: int


@dataclass(frozen=True, slots=True)
class CurvesReport:
    format: str
    source: str
    series: tuple[SeriesSummary, ...]
    verdict: str
    since: float | None
    axis: str
    findings: tuple[Evidence, ...]
    suggestions: tuple[str, ...]
    notes: tuple[str, ...] = ()
    schema: str = SCHEMA


def to_dict(report: CurvesReport) -> dict[str, Any]:
    data = to_plain(report)
    return {"schema": data.pop("schema"), **data}


def dumps(report: CurvesReport) -> str:
    return json.dumps(to_dict(report), indent=2, allow_nan=False) + "\n"


def render_text(report: CurvesReport) -> str:
    since = "" if report.since is None else f" since {report.axis} {report.since:g}"
    used = [s for s in report.series if s.role]
    lines = [
        f"nanscope doctor: {report.source}",
        f"  format: {report.format}; series: {', '.join(s.name for s in report.series[:12])}",
        f"  used: {', '.join(f'{s.name} ({s.role})' for s in used) or 'none'}",
        f"verdict: {report.verdict}{since}",
        *(f"  - {f.label}: {f.detail}" for f in report.findings),
        *(f"  note: {n}" for n in report.notes),
        "what to do:",
        *(f"  {i}. {s}" for i, s in enumerate(report.suggestions, 1)),
    ]
    return "\n".join(lines) + "\n"
