"""Rendering of the pre-flight report (``nanscope.check/1``): terminal lines and an HTML page (data in report.py)."""

from __future__ import annotations

import html
import math
from typing import IO

from nanscope.preflight.lr_find import LRFindResult
from nanscope.preflight.report import CheckReport
from nanscope.report.text import print_panel

__all__ = ["check_page", "lines", "lr_find_page", "print_check"]

_STYLE = {"error": "bold red", "warning": "bold yellow", "info": "cyan"}
_CLASS = {"error": "verdict bad", "warning": "verdict warn", "info": "dim"}


def lines(report: CheckReport) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    counts = {s: sum(f.severity == s for f in report.findings) for s in ("error", "warning", "info")}
    if not report.findings:
        out.append(("bold green", f"no problem found ({len(report.checked)} checks passed)"))
    else:
        summary = ", ".join(f"{n} {s}{'s' if n != 1 else ''}" for s, n in counts.items() if n)
        out.append(("bold red" if counts["error"] else "bold yellow", summary))
    for f in report.findings:
        out.append((_STYLE[f.severity], f"{f.severity}: {f.code} - {f.where}"))
        out.append(("", f"  {f.message}"))
        if f.samples:
            more = f" (+{len(f.samples) - 20} more)" if len(f.samples) > 20 else ""
            out.append(("bold", f"  dataset samples: {', '.join(map(str, f.samples[:20]))}{more}"))
        out.append(("dim", f"  fix: {f.fix}"))
    if report.checked:
        out.append(("dim", f"passed: {', '.join(report.checked)}"))
    skipped = report.environment.get("not_checked") or {}
    for code, why in skipped.items():
        out.append(("dim", f"not checked: {code} ({why})"))
    return out


def print_check(report: CheckReport, file: IO[str] | None = None) -> None:
    border = "red" if not report.ok else "yellow" if report.findings else "green"
    print_panel("nanscope check", lines(report), border, file)


def check_page(report: CheckReport) -> str:
    from nanscope.report.html import page

    body = ["<h1>nanscope check</h1>"]
    if not report.findings:
        body.append(f"<p class='verdict good'>No problem found ({len(report.checked)} checks passed).</p>")
    for f in report.findings:
        samples = ""
        if f.samples:
            samples = f"<p><b>Dataset samples:</b> {html.escape(', '.join(map(str, f.samples[:200])))}</p>"
        body.append(
            f"<h2>{html.escape(f.code)}</h2><p class='{_CLASS[f.severity]}'>{f.severity}</p>"
            f"<p><b>Where:</b> {html.escape(f.where)}</p><p>{html.escape(f.message)}</p>{samples}"
            f"<p><b>Fix:</b> {html.escape(f.fix)}</p>"
        )
    if report.checked:
        body.append(f"<p><b>Passed:</b> {html.escape(', '.join(report.checked))}</p>")
    skipped = report.environment.get("not_checked") or {}
    if skipped:
        body.append(
            "<p><b>Not checked:</b></p><ul>"
            + "".join(f"<li>{html.escape(c)}: {html.escape(w)}</li>" for c, w in skipped.items())
            + "</ul>"
        )
    return page("nanscope check", body)


def lr_find_page(result: LRFindResult) -> str:
    """The loss (raw and smoothed) against the LR on a log axis, the suggestion and the divergence marked."""
    from nanscope.report.html import figure_class, page, svg

    figure = figure_class()(figsize=(8, 4.2))
    ax = figure.subplots()
    finite = [(lr, loss) for lr, loss in result.points if math.isfinite(loss)]
    if finite:
        ax.plot([p[0] for p in finite], [p[1] for p in finite], color="#bbb", lw=1, label="loss")
    ax.plot(
        [p[0] for p in result.points[: len(result.smoothed)]],
        result.smoothed,
        color="#1f77b4",
        label="smoothed",
    )
    if result.suggested_lr is not None:
        ax.axvline(
            result.suggested_lr, color="#2ca02c", ls="--", label=f"suggested {result.suggested_lr:.3g}"
        )
    if result.diverged_at is not None:
        ax.axvline(result.diverged_at, color="#d62728", ls=":", label=f"diverged {result.diverged_at:.3g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss")
    ax.legend()
    body = [
        "<h1>nanscope lr-find</h1>",
        f"<p class='verdict {'good' if result.suggested_lr is not None else 'warn'}'>{html.escape(result.advice())}</p>",
        f'<div id="plot">{svg(figure)}</div>',
        f"<p class='dim'>{len(result.points)} steps, stopped: {html.escape(result.stop)}. Suggestion: the LR at the "
        "smoothed loss's minimum divided by 10.</p>",
    ]
    return page("nanscope lr-find", body)
