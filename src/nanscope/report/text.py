"""Terminal rendering of a report: plain text always, colour and a frame through rich when installed."""

from __future__ import annotations

import math
import sys
from typing import IO

from nanscope.report.model import EarlyWarning, Intervention, Report

__all__ = [
    "early_warning_line",
    "intervention_line",
    "plain_text",
    "print_panel",
    "print_report",
    "render_text",
]


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if not math.isfinite(value):
        return str(value)
    return f"{value:.4g}"


def early_warning_line(w: EarlyWarning) -> str:
    label = "loss" if w.series == "loss" else "grad norm"
    after = f"; non-finite {w.nonfinite_after} steps later" if w.nonfinite_after is not None else ""
    layers = f"; rising fastest: {', '.join(w.layers)}" if w.layers else ""
    return (
        f"early warning: {label} spike at step {w.step}: {_fmt(w.value)} against {_fmt(w.baseline)} "
        f"(x{w.value / w.baseline:.3g}){after}{layers}"
    )


def intervention_line(i: Intervention) -> str:
    return f"step {i.step}: {i.kind} - {i.detail}"


def _lines(report: Report) -> list[tuple[str, str]]:
    """(style, text) pairs: the single source both renderers draw from."""
    out: list[tuple[str, str]] = []
    first, cause = report.first_nonfinite, report.cause
    if report.verdict == "unwatched":
        out.append(("bold yellow", "nothing watched - " + report.headline().split(": ", 1)[1]))
    elif first is None:
        out.append(("bold green", f"healthy - {report.steps} steps watched, no NaN/Inf seen"))
    else:
        where = ""
        if report.ranks:
            world = len(report.ranks)
            rank = None if cause is None else cause.rank
            where = f" on rank {rank} of {world}" if rank is not None else f" on every rank of {world}"
        out.append(("bold red", f"non-finite {first.where} at step {first.step}{where}"))
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
    for r in report.ranks:
        seen = "nothing non-finite" if r.where is None else f"non-finite {r.where} at step {r.step}"
        own = f", {r.kind}" if r.kind else ""
        samples = f", samples {', '.join(map(str, r.samples[:10]))}" if r.samples else ""
        loss = {True: "finite", False: "non-finite", None: "-"}[r.loss_finite]
        role = "culprit" if r.culprit else "rank"
        out.append(
            ("bold" if r.culprit else "dim", f"  {role} {r.rank}: {seen}{own}{samples} (its loss {loss})")
        )
    if report.ending is not None:
        out.append(("bold yellow", f"run ended early: {report.ending.text()}"))
    if report.scaler_skipped_steps:
        out.append(
            (
                "dim",
                f"GradScaler skipped {report.scaler_skipped_steps} step(s) on Inf/NaN gradients (by design)",
            )
        )
    if report.detections:
        steps = ", ".join(str(d.step) for d in report.detections[:10])
        out.append(
            ("yellow", f"non-finite again at steps {steps} (policy {report.policy}: training went on)")
        )
    for w in report.early_warnings[:5]:
        out.append(("yellow", early_warning_line(w)))
    if report.interventions:
        out.append(("bold", f"what nanscope did (policy {report.policy}):"))
        for i in report.interventions[:12]:
            out.append(("", "  " + intervention_line(i)))
        if len(report.interventions) > 12:
            out.append(("dim", f"  ... {len(report.interventions) - 12} more in the JSON report"))
    outcome = report.outcome
    if outcome is not None and (outcome.failed_steps or outcome.clipped_steps or outcome.quarantined):
        parts = [f"{outcome.failed_steps} failed step(s)"]
        if outcome.skipped_steps:
            parts.append(f"{outcome.skipped_steps} skipped")
        if outcome.rollbacks:
            parts.append(f"{outcome.rollbacks} rollback(s) undoing {outcome.steps_undone} steps")
        if outcome.quarantined:
            parts.append(f"{len(outcome.quarantined)} sample(s) quarantined")
        if outcome.clipped_steps:
            parts.append(f"{outcome.clipped_steps} step(s) clipped ({outcome.clip_rate:.1%})")
        parts.append(f"about {outcome.seconds_lost:.3g} s of training lost")
        status = "stopped: the policy gave up" if outcome.gave_up else "the run went on"
        out.append(("bold", f"outcome: {status}; " + ", ".join(parts)))
        if outcome.quarantined:
            shown = ", ".join(map(str, outcome.quarantined[:30]))
            more = f" (+{len(outcome.quarantined) - 30} more)" if len(outcome.quarantined) > 30 else ""
            out.append(("bold", f"  quarantined dataset samples (repair or drop them): {shown}{more}"))
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
    return plain_text("nanscope report", _lines(report))


def plain_text(title: str, lines: list[tuple[str, str]]) -> str:
    """``(style, text)`` lines under a title, without styles."""
    return "\n".join([title, *(text for _, text in lines)]) + "\n"


def print_report(report: Report, file: IO[str] | None = None) -> None:
    """Print the report for a person: through rich when installed (``pip install nanscope[cli]``)."""
    border = "green" if report.first_nonfinite is None else "red"
    print_panel("nanscope report", _lines(report), border, file)


def print_panel(title: str, lines: list[tuple[str, str]], border: str, file: IO[str] | None = None) -> None:
    """``(style, text)`` lines in a rich panel, or as plain text without rich."""
    stream = file if file is not None else sys.stderr
    try:
        from rich.console import Console
        from rich.panel import Panel
        from rich.text import Text
    except ImportError:
        stream.write(plain_text(title, lines))
        return
    body = Text()
    for i, (style, text) in enumerate(lines):
        body.append(("\n" if i else "") + text, style=style or None)
    Console(file=stream, highlight=False, soft_wrap=False).print(
        Panel(body, title=title, border_style=border, expand=False)
    )
