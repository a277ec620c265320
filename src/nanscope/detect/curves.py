"""Reading training curves the way seed 004 teaches (pure functions over :class:`~nanscope.curves.model.Curves`).

Train and validation loss together say what is wrong: both falling = still learning (``healthy``); train
falling while validation rises or stalls = ``overfitting``; train flat while validation falls = a
``data_problem``; both flat = a learning bottleneck (``plateau``); the loss climbing away from its best value
= ``diverging``; loss spikes far above the trend = ``unstable``; NaN/Inf in a loss or learning rate =
``nonfinite``. Trends are measured on a running median (robust to single noisy points) and compared between
the start, the best point and the end of each curve; every verdict carries the numbers behind it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from nanscope.curves.model import Curves, Series
from nanscope.report.curves import CurvesReport, SeriesSummary
from nanscope.report.model import Evidence

__all__ = ["CurveDiagnosis", "VERDICTS", "classify", "report", "roles"]

VERDICTS = ("healthy", "overfitting", "data_problem", "plateau", "diverging", "unstable", "nonfinite")

# the ecosystem's tag conventions: loss, train_loss, train/loss, Loss/train, loss/training, nanscope/loss, ...
_TRAIN = re.compile(r"^(.* - )?(nanscope/)?((train(ing)?[_/ ]?)?loss(_epoch|_step)?|loss[_/ ]train(ing)?)$")
_VAL = re.compile(
    r"^(.* - )?((val|valid|validation|eval|test)[_/ ]?loss(_epoch)?|loss[_/ ](val|valid|validation|eval|test))$"
)
_LR = re.compile(r"^(.* - )?(nanscope/|train/)?(lr|learning_rate|lr-\w+|lr/\w+)$")

_FLAT = 0.10  # a relative change below this over the run is "flat"
_RISE = 0.10  # validation this far above its best is "rising"
_DIVERGE = 1.5  # train loss ending this many times above its best is "diverging"
_SPIKE = 2.5  # a point this many times the median of its neighbours is a spike


@dataclass(frozen=True, slots=True)
class CurveDiagnosis:
    verdict: str
    since: float | None
    axis: str
    findings: tuple[Evidence, ...]
    suggestions: tuple[str, ...]
    roles: dict[str, str]  # series name -> train_loss / val_loss / lr


def roles(curves: Curves) -> dict[str, str]:
    """Which series is the train loss, the validation loss and the learning rate."""
    found: dict[str, str] = {}
    names = [s.name for s in curves.series]
    lowered = {n: n.lower() for n in names}
    trains = [n for n in names if _TRAIN.match(lowered[n]) and not _VAL.match(lowered[n])]
    vals = [n for n in names if _VAL.match(lowered[n])]
    lrs = [n for n in names if _LR.match(lowered[n])]
    if trains:
        by_name = {n: curves.get(n) for n in trains}
        epoch = [n for n in trains if lowered[n].endswith("_epoch") and len(by_name[n] or ()) >= 8]
        found[(epoch or sorted(trains, key=lambda n: -len(by_name[n] or ())))[0]] = "train_loss"
    elif fallback := [n for n in names if "loss" in lowered[n] and n not in vals]:
        found[fallback[0]] = "train_loss"
    if vals:
        found[sorted(vals, key=lambda n: -len(curves.get(n) or ()))[0]] = "val_loss"
    if lrs:
        found[lrs[0]] = "lr"
    return found


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    return ordered[n // 2] if n % 2 else 0.5 * (ordered[n // 2 - 1] + ordered[n // 2])


def _smooth(values: Sequence[float]) -> list[float]:
    half = max(1, len(values) // 20)
    return [_median(values[max(0, i - half) : i + half + 1]) for i in range(len(values))]


def _ends(values: Sequence[float]) -> tuple[float, float]:
    k = max(1, len(values) // 10)
    return _median(values[:k]), _median(values[-k:])


def _change(start: float, end: float) -> float:
    return (end - start) / abs(start) if start else 0.0


@dataclass(frozen=True, slots=True)
class _Trend:
    series: Series
    smooth: list[float]
    start: float
    end: float
    best: float
    best_at: int

    @classmethod
    def of(cls, series: Series) -> _Trend:
        values = list(series.values)
        smooth = _smooth(values)
        start, end = _ends(smooth)
        best_at = min(range(len(smooth)), key=smooth.__getitem__)
        return cls(series, smooth, start, end, smooth[best_at], best_at)

    @property
    def change(self) -> float:
        return _change(self.start, self.end)

    def step(self, i: int) -> float:
        return self.series.steps[i]

    def evidence(self, role: str) -> Evidence:
        s = self.series
        return Evidence(
            role.replace("_", " "),
            f"{s.name}: {self.start:.4g} at the start, best {self.best:.4g} at {s.axis} {self.step(self.best_at):g}, "
            f"{self.end:.4g} at the end ({self.change:+.1%} over {len(s)} points; running median)",
            {
                "series": s.name,
                "start": self.start,
                "best": self.best,
                "best_at": self.step(self.best_at),
                "end": self.end,
                "change": self.change,
                "points": len(s),
            },
        )


def _first_nonfinite(series: Series) -> float | None:
    return next((t for t, v in zip(series.steps, series.values, strict=True) if not math.isfinite(v)), None)


def classify(curves: Curves) -> CurveDiagnosis:
    """The verdict on one run's curves, with ``since`` (where it starts) and the trends behind it."""
    found = roles(curves)
    by_role = {role: curves.get(name) for name, role in found.items()}
    train, val, lr = by_role.get("train_loss"), by_role.get("val_loss"), by_role.get("lr")
    if train is None and val is None:
        names = ", ".join(s.name for s in curves.series[:20])
        return CurveDiagnosis(
            "healthy" if not curves.series else "plateau",
            None,
            "step",
            (Evidence("series", f"no loss series among: {names}; nothing to judge"),),
            ("Log the training loss (and a validation loss) so the curves can be read.",),
            found,
        )
    main = train if train is not None else val
    assert main is not None
    axis = main.axis
    findings: list[Evidence] = []

    # 1. non-finite values
    bad = [(s, t) for s in (train, val, lr) if s is not None and (t := _first_nonfinite(s)) is not None]
    if bad:
        first = min(bad, key=lambda b: b[1])
        detail = ", ".join(f"{s.name} at {s.axis} {t:g}" for s, t in bad)
        findings.append(Evidence("non-finite", f"first NaN/Inf: {detail}", {"series": first[0].name}))
        which = "lr" if lr is not None and first[0] is lr else "loss"
        return CurveDiagnosis(
            "nonfinite", first[1], first[0].axis, tuple(findings), _advice("nonfinite", which), found
        )

    t_train = _Trend.of(train) if train is not None and len(train) >= 3 else None
    t_val = _Trend.of(val) if val is not None and len(val) >= 3 else None
    for trend, role in ((t_train, "train loss"), (t_val, "validation loss")):
        if trend is not None:
            findings.append(trend.evidence(role))
    t_main = t_train or t_val
    if t_main is None:
        return CurveDiagnosis("healthy", None, axis, tuple(findings), _advice("short"), found)

    # 2. diverging: the training loss climbs well above its best value and keeps climbing
    if (
        t_main.best_at < 0.9 * (len(t_main.smooth) - 1)
        and t_main.end > _DIVERGE * t_main.best
        and t_main.end > t_main.start
    ):
        return CurveDiagnosis(
            "diverging", t_main.step(t_main.best_at), axis, tuple(findings), _advice("diverging"), found
        )

    # 3. unstable: spikes far above the running median
    values = list(t_main.series.values)
    spikes = _spikes(values, floor=0.1 * abs(t_main.start))
    if len(spikes) >= 3 and len(spikes) >= 0.02 * len(values):
        findings.append(
            Evidence(
                "spikes",
                f"{len(spikes)} of {len(values)} points are more than {_SPIKE}x the median of the points around them "
                f"(first at {axis} {t_main.step(spikes[0]):g})",
                {"count": len(spikes), "points": len(values), "first": t_main.step(spikes[0])},
            )
        )
        return CurveDiagnosis(
            "unstable", t_main.step(spikes[0]), axis, tuple(findings), _advice("unstable"), found
        )

    if t_train is not None and t_val is not None:
        # 4. overfitting: validation rose from its best while training kept improving
        train_at_best_val = _value_at(t_train, t_val.step(t_val.best_at))
        val_rose = t_val.end > (1 + _RISE) * t_val.best and t_val.best_at < 0.85 * (len(t_val.smooth) - 1)
        if val_rose and t_train.end < train_at_best_val:
            return CurveDiagnosis(
                "overfitting",
                t_val.step(t_val.best_at),
                t_val.series.axis,
                tuple(findings),
                _advice("overfitting"),
                found,
            )
        # 5. data problem: training flat while validation improves
        if abs(t_train.change) < _FLAT and t_val.change < -1.5 * _FLAT:
            return CurveDiagnosis(
                "data_problem", t_train.step(0), axis, tuple(findings), _advice("data_problem"), found
            )
    # 6. plateau: nothing improves
    flat = [t for t in (t_train, t_val) if t is not None]
    if all(t.change > -_FLAT for t in flat):
        return CurveDiagnosis("plateau", t_main.step(0), axis, tuple(findings), _advice("plateau"), found)
    still = t_main.smooth[-1] < t_main.smooth[max(0, int(0.8 * len(t_main.smooth)) - 1)] * 0.98
    return CurveDiagnosis(
        "healthy", None, axis, tuple(findings), _advice("learning" if still else "healthy"), found
    )


def _spikes(values: Sequence[float], floor: float) -> list[int]:
    """Points far above their surroundings: above ``_SPIKE`` times the larger of the medians of the points just
    before and just after them (so a steep but smooth descent or rise is never a spike), and large against the
    run's scale (``floor``)."""
    window = max(3, len(values) // 20)
    out = []
    for i in range(1, len(values) - 1):
        before = _median(values[max(0, i - window) : i])
        after = _median(values[i + 1 : i + 1 + window])
        level = max(before, after)
        if level > 0 and values[i] > _SPIKE * level and values[i] - level > floor:
            out.append(i)
    return out


def _value_at(trend: _Trend, step: float) -> float:
    steps = trend.series.steps
    i = min(range(len(steps)), key=lambda j: abs(steps[j] - step))
    return trend.smooth[i]


def _advice(verdict: str, detail: str = "") -> tuple[str, ...]:
    if verdict == "nonfinite" and detail == "lr":
        return (
            "The learning rate itself became NaN/Inf: the schedule is broken (a Caffe 'poly' policy without "
            "max_iter, a warm-up dividing by zero, a scheduler stepped past its end). Fix the schedule.",
            "Run the training under `nanscope run` to catch the step and the cause as it happens.",
        )
    table = {
        "nonfinite": (
            "The loss became NaN/Inf: run the training under `nanscope run train.py` to get the step, the op, "
            "the module and the samples responsible.",
            "Common causes: a learning rate too high (lower it 10x), dirty samples (NaN/Inf in the data), "
            "log(0) or division by zero in the loss; add gradient clipping.",
        ),
        "diverging": (
            "The loss climbs away from its best value: lower the learning rate (try 10x lower) and add "
            "gradient clipping (clip_grad_norm_ at a few times the typical grad norm).",
            "If train and validation both rise, suspect the architecture, the hyperparameters or the data "
            "(normalize inputs, check labels) rather than overfitting.",
        ),
        "unstable": (
            "Loss spikes: lower the learning rate or add warm-up, increase the batch size, clip gradients.",
            "Spikes at the same data positions point to bad batches: `nanscope run --policy quarantine+skip` "
            "finds and excludes them.",
        ),
        "overfitting": (
            "Validation stopped improving while training still does: stop at the best validation point "
            "(early stopping), add regularization (weight decay, dropout, augmentation) or more data.",
            "A smaller model, or fewer epochs, generalizes better here.",
        ),
        "data_problem": (
            "Training does not improve while validation does: the training data is the problem. Check the "
            "training labels (noise, misalignment with inputs), the training-only preprocessing and "
            "augmentation, and whether validation leaks training samples.",
        ),
        "plateau": (
            "Neither loss improves: a learning bottleneck. Seed 004: lower the learning rate or the batch size; "
            "also check that the learning rate is not far too small, that inputs are normalized and that "
            "gradients reach every layer.",
        ),
        "learning": ("Both losses are still falling at the end: train longer.",),
        "healthy": ("The curves look healthy.",),
        "short": ("Too few points to judge a trend; log more often.",),
    }
    return table[verdict]


def report(curves: Curves) -> CurvesReport:
    """Classify ``curves`` and summarize every series read: the ``nanscope.curves/1`` report."""
    diagnosis = classify(curves)
    summaries = []
    for s in curves.series:
        finite = [v for v in s.values if math.isfinite(v)]
        summaries.append(
            SeriesSummary(
                s.name,
                s.axis,
                diagnosis.roles.get(s.name),
                len(s),
                s.values[0],
                s.values[-1],
                min(finite) if finite else None,
                len(s) - len(finite),
            )
        )
    return CurvesReport(
        curves.format,
        curves.source,
        tuple(summaries),
        diagnosis.verdict,
        diagnosis.since,
        diagnosis.axis,
        diagnosis.findings,
        diagnosis.suggestions,
        curves.notes,
    )
