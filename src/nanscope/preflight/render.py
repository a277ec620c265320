"""Rendering of the pre-flight report (``nanscope.check/1``): terminal lines and an HTML page (data in report.py)."""

from __future__ import annotations

import html
from typing import IO

from nanscope.preflight.report import CheckReport
from nanscope.report.text import print_panel

__all__ = ["check_page", "lines", "print_check", "render_check"]

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


def render_check(report: CheckReport) -> str:
    return "\n".join(["nanscope check", *(text for _, text in lines(report))]) + "\n"


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
