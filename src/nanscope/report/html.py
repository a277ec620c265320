"""Self-contained HTML pages rendered from the report values: one file, no script, nothing fetched at view time.

Plots are drawn by matplotlib (the ``html`` extra: ``pip install 'nanscope[html]'``) through its object API
(no pyplot, no global state) and inlined as SVG with text as paths, so the page needs no font or network.
:func:`run_page` renders a watched run's :class:`~nanscope.report.model.Report`; :func:`curves_page` renders
``nanscope doctor``'s :class:`~nanscope.report.curves.CurvesReport` with the curves it read.
"""

from __future__ import annotations

import html
import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nanscope._atomic import atomic_write_text
from nanscope.curves.model import Curves
from nanscope.errors import UsageError
from nanscope.report.curves import CurvesReport
from nanscope.report.model import Report

__all__ = ["curves_page", "figure_class", "page", "run_page", "svg", "write"]

_STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 60em; color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
.verdict { padding: .6em 1em; border-radius: 6px; font-weight: 600; }
.bad { background: #fde8e8; color: #8a1c1c; } .good { background: #e6f6ea; color: #1d5e2c; }
.warn { background: #fff4dc; color: #7a5200; }
table { border-collapse: collapse; } td, th { border: 1px solid #ddd; padding: .25em .6em; text-align: left; }
code { background: #f4f4f4; padding: 0 .25em; } .dim { color: #666; } svg { max-width: 100%; height: auto; }
"""


def figure_class() -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise UsageError("HTML reports need matplotlib: pip install 'nanscope[html]'") from exc
    return Figure


def svg(figure: Any) -> str:
    import matplotlib

    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "path", "svg.hashsalt": "nanscope"}):
        figure.savefig(buffer, format="svg", bbox_inches="tight")
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def _finite(steps: Sequence[float], values: Sequence[float | None]) -> tuple[list[float], list[float]]:
    pairs = [(s, v) for s, v in zip(steps, values, strict=True) if v is not None and math.isfinite(v)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _log_scale(values: Sequence[float]) -> bool:
    positive = [v for v in values if v > 0]
    return len(positive) == len(values) and bool(positive) and max(positive) / min(positive) > 20


def page(title: str, body: list[str]) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def _list(items: Sequence[str], ordered: bool = False, ident: str = "") -> str:
    tag = "ol" if ordered else "ul"
    attr = f' id="{ident}"' if ident else ""
    return f"<{tag}{attr}>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + f"</{tag}>"


def run_page(report: Report) -> str:
    """The page for a watched run: verdict, cause, where, samples, history plots, actions, suggestions."""
    Figure = figure_class()
    first, cause = report.first_nonfinite, report.cause
    body = ["<h1>nanscope report</h1>"]
    if first is None:
        good = "good" if report.verdict == "healthy" else "warn"
        body.append(f'<p id="verdict" class="verdict {good}">{html.escape(report.headline())}</p>')
    else:
        body.append(
            f'<p id="verdict" class="verdict bad">non-finite {html.escape(first.where)} at step {first.step}</p>'
        )
    if cause is not None:
        rows = [("kind", cause.kind), ("phase", cause.phase)]
        if report.ranks:
            rank = "every rank (global)" if cause.rank is None else str(cause.rank)
            rows.append(("rank", f"{rank} of {len(report.ranks)}"))
        rows += [(k, v) for k, v in (("module", cause.module), ("op", cause.op)) if v]
        rows += [
            (k, v) for k, v in (("parameter", cause.parameter), ("hyperparameter", cause.hyperparameter)) if v
        ]
        source = next((e.data.get("source") for e in cause.evidence if e.label == "origin op"), None)
        if source:
            rows.append(("source line", str(source)))
        body.append('<h2>Cause</h2><table id="cause">')
        body += [f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows]
        body.append("</table>")
        body.append(f"<p>{html.escape(cause.summary)}</p>")
        if cause.samples:
            body.append('<h2>Culprit samples</h2><table id="samples"><tr><th>dataset index</th></tr>')
            body += [f"<tr><td>{s}</td></tr>" for s in cause.samples[:200]]
            body.append("</table>")
        if cause.evidence:
            body.append("<h2>Evidence</h2>" + _list([f"{e.label}: {e.detail}" for e in cause.evidence]))
    if report.ranks:
        body.append(
            '<h2>Ranks</h2><table id="ranks"><tr><th>rank</th><th>culprit</th><th>saw first</th>'
            "<th>its loss</th><th>its own cause</th><th>samples</th></tr>"
        )
        for r in report.ranks:
            seen = "-" if r.where is None else f"{r.where} at step {r.step}"
            loss = {True: "finite", False: "non-finite", None: "-"}[r.loss_finite]
            samples = ", ".join(map(str, r.samples[:50])) if r.samples else "-"
            cells = (r.rank, "yes" if r.culprit else "", seen, loss, r.kind or "-", samples)
            body.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
        body.append("</table>")
    hist = report.history
    if hist.step:
        series = [("loss", hist.loss), ("grad norm", hist.grad_norm), ("learning rate", hist.lr)]
        series = [(n, v) for n, v in series if any(x is not None for x in v)]
        figure = Figure(figsize=(9, 2.4 * max(1, len(series))))
        axes = figure.subplots(len(series), 1, sharex=True, squeeze=False)[:, 0]
        for ax, (name, values) in zip(axes, series, strict=True):
            xs, ys = _finite(hist.step, values)
            ax.plot(xs, ys, color="#1f5fa8", linewidth=1.2)
            if ys and _log_scale(ys):
                ax.set_yscale("log")
            bad = [
                s for s, v in zip(hist.step, values, strict=True) if v is not None and not math.isfinite(v)
            ]
            for s in bad[:50]:
                ax.axvline(s, color="#c0392b", alpha=0.3, linewidth=0.8)
            if first is not None:
                ax.axvline(
                    first.step, color="#c0392b", linestyle="--", linewidth=1.2, label="first non-finite"
                )
            for w in report.early_warnings:
                ax.axvline(w.step, color="#e0a100", linestyle=":", linewidth=1.0)
            ax.set_ylabel(name)
            ax.grid(alpha=0.3)
        axes[-1].set_xlabel("step")
        if first is not None:
            axes[0].legend(loc="best")
        body.append(f'<h2>History</h2><div id="plot">{svg(figure)}</div>')
    if report.early_warnings:
        body.append("<h2>Early warnings</h2>")
        body.append(
            _list(
                [
                    f"step {w.step}: {w.series} {w.value:.4g} against {w.baseline:.4g}"
                    + (
                        f", non-finite {w.nonfinite_after} steps later"
                        if w.nonfinite_after is not None
                        else ""
                    )
                    for w in report.early_warnings
                ],
                ident="warnings",
            )
        )
    if report.interventions:
        body.append(f"<h2>What nanscope did (policy {html.escape(report.policy)})</h2>")
        body.append(
            _list([f"step {i.step}: {i.kind} - {i.detail}" for i in report.interventions], ident="actions")
        )
    if report.suggestions:
        body.append("<h2>What to do</h2>" + _list(report.suggestions, ordered=True, ident="suggestions"))
    env = report.environment
    body.append(
        f'<p class="dim">nanscope {html.escape(str(env.get("nanscope", "")))}, torch '
        f"{html.escape(str(env.get('torch', '')))}; policy {html.escape(report.policy)}</p>"
    )
    return page("nanscope report", body)


def curves_page(report: CurvesReport, curves: Curves) -> str:
    """The page for ``nanscope doctor``: the curves it used with the finding marked, the evidence, advice."""
    Figure = figure_class()
    good = report.verdict == "healthy"
    since = "" if report.since is None else f" since {report.axis} {report.since:g}"
    body = [
        "<h1>nanscope doctor</h1>",
        f'<p>{html.escape(report.source)} <span class="dim">(format: {html.escape(report.format)})</span></p>',
        f'<p id="verdict" class="verdict {"good" if good else "warn"}">{html.escape(report.verdict)}'
        f"{html.escape(since)}</p>",
    ]
    used = {s.name: s.role for s in report.series if s.role}
    losses = [s for s in curves.series if used.get(s.name) in ("train_loss", "val_loss")]
    lr = [s for s in curves.series if used.get(s.name) == "lr"]
    if losses:
        figure = Figure(figsize=(9, 4.2 if not lr else 5.6))
        axes = figure.subplots(
            2 if lr else 1,
            1,
            sharex=True,
            squeeze=False,
            gridspec_kw={"height_ratios": [3, 1]} if lr else None,
        )[:, 0]
        values = []
        for s in losses:
            xs, ys = _finite(s.steps, s.values)
            values += ys
            axes[0].plot(xs, ys, linewidth=1.2, label=f"{s.name} ({used[s.name].replace('_', ' ')})")
        if values and _log_scale(values):
            axes[0].set_yscale("log")
        if report.since is not None:
            axes[0].axvline(
                report.since, color="#c0392b", linestyle="--", label=f"{report.verdict} from here"
            )
        axes[0].set_ylabel("loss")
        axes[0].legend(loc="best")
        axes[0].grid(alpha=0.3)
        if lr:
            xs, ys = _finite(lr[0].steps, lr[0].values)
            axes[1].plot(xs, ys, color="#555")
            axes[1].set_ylabel(lr[0].name)
            axes[1].grid(alpha=0.3)
        axes[-1].set_xlabel(report.axis)
        body.append(f'<h2>Curves</h2><div id="plot">{svg(figure)}</div>')
    body.append(
        "<h2>Findings</h2>" + _list([f"{f.label}: {f.detail}" for f in report.findings], ident="findings")
    )
    if report.notes:
        body.append("<h2>Notes</h2>" + _list(report.notes))
    body.append("<h2>What to do</h2>" + _list(report.suggestions, ordered=True, ident="suggestions"))
    body.append(
        '<h2>Series read</h2><table id="series"><tr><th>name</th><th>axis</th><th>points</th><th>role</th></tr>'
    )
    body += [
        f"<tr><td>{html.escape(s.name)}</td><td>{s.axis}</td><td>{s.points}</td><td>{s.role or ''}</td></tr>"
        for s in report.series
    ]
    body.append("</table>")
    return page("nanscope doctor", body)


def write(page: str, path: str | os.PathLike[str]) -> Path:
    """Write a page atomically (temporary file + rename)."""
    return atomic_write_text(path, page)
