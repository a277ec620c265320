"""Terminal rendering of a report: plain text always, colour and a frame through rich when installed."""

from __future__ import annotations

import math
import sys
from typing import IO

from nanscope.report.model import Report

__all__ = ["print_report", "render_text"]


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if not math.isfinite(value):
        return str(value)
    return f"{value:.4g}"


def _lines(report: Report) -> list[tuple[str, str]]:
    """(style, text) pairs: the single source both renderers draw from."""
    out: list[tuple[str, str]] = []
    first, cause = report.first_nonfinite, report.cause
    if first is None:
        out.append(("bold green", f"healthy - {report.steps} steps watched, no NaN/Inf seen"))
    else:
        out.append(("bold red", f"non-finite {first.where} at step {first.step}"))
        shown = ", ".join(first.names[:8]) + (
            f" (+{len(first.names) - 8} more)" if len(first.names) > 8 else ""
        )
        out.append(("", f"  in: {shown}"))
    if cause is not None:
        out.append(("bold", f"cause: {cause.kind}  (phase: {cause.phase})"))
        out.append(("", f"  {cause.summary}"))
        for label, value in (
            ("module", cause.module),
            ("op", cause.op),
            ("parameter", cause.parameter),
            ("hyperparameter", cause.hyperparameter),
        ):
            if value is not None:
                out.append(("", f"  {label}: {value}"))
        if cause.samples is not None:
            shown = ", ".join(map(str, cause.samples[:20]))
            more = f" (+{len(cause.samples) - 20} more)" if len(cause.samples) > 20 else ""
            out.append(("bold", f"  dataset samples: {shown}{more}"))
        for ev in cause.evidence:
            out.append(("dim", f"  - {ev.label}: {ev.detail}"))
    if report.detections:
        steps = ", ".join(str(d.step) for d in report.detections[:10])
        out.append(
            ("yellow", f"non-finite again at steps {steps} (policy {report.policy}: training went on)")
        )
    hist = report.history
    if hist.step:
        out.append(
            (
                "",
                f"last step {hist.step[-1]}: loss {_fmt(hist.loss[-1])}, grad norm {_fmt(hist.grad_norm[-1])}, "
                f"lr {_fmt(hist.lr[-1])}",
            )
        )
    if report.suggestions:
        out.append(("bold", "what to do:"))
        out.extend(("", f"  {i}. {s}") for i, s in enumerate(report.suggestions, 1))
    return out


def render_text(report: Report) -> str:
    """The report as plain text (no colour), one finding per line."""
    return "\n".join(["nanscope report", *(text for _, text in _lines(report))]) + "\n"


def print_report(report: Report, file: IO[str] | None = None) -> None:
    """Print the report for a person: through rich when installed (``pip install nanscope[cli]``)."""
    stream = file if file is not None else sys.stderr
    try:
        from rich.console import Console
        from rich.panel import Panel
        from rich.text import Text
    except ImportError:
        stream.write(render_text(report))
        return
    body = Text()
    for i, (style, text) in enumerate(_lines(report)):
        body.append(("\n" if i else "") + text, style=style or None)
    border = "green" if report.first_nonfinite is None else "red"
    Console(file=stream, highlight=False, soft_wrap=False).print(
        Panel(body, title="nanscope report", border_style=border, expand=False)
    )
