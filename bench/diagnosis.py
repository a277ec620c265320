"""Time to diagnosis on every faulty scenario of the zoo, as a multiple of one ordinary step of that scenario.

The scenario runs under ``policy="warn"`` so that it goes on after the diagnosis; an ordinary step is the
median interval between consecutive ``optimizer.step()`` completions other than the one around the diagnosis,
and the time to diagnosis is the time spent in the watcher from the trigger to the finished report.
"""

from __future__ import annotations

import importlib
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import nanscope
from nanscope.watching import watcher as watcher_module

SCENARIOS = Path(__file__).resolve().parent.parent / "tests" / "scenarios"


@dataclass(frozen=True)
class DiagnosisTiming:
    scenario: str
    kind: str
    step_seconds: float
    diagnosis_seconds: float

    @property
    def ratio(self) -> float:
        return self.diagnosis_seconds / self.step_seconds


def _optimizers(opt: object) -> list:
    return list(opt) if isinstance(opt, (list, tuple)) else [opt]


def _one_round(name: str, module: object) -> DiagnosisTiming:
    model, optimizer, train = module.setup()  # type: ignore[attr-defined]
    spent: list[float] = []
    stamps: list[float] = []
    original = watcher_module.Watcher._trigger

    def timed(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        first = self._diagnosis is None
        start = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            if first:
                spent.append(time.perf_counter() - start)

    def stamp(*args: object) -> None:
        stamps.append(time.perf_counter())

    handles = [o.register_step_post_hook(stamp) for o in _optimizers(optimizer)]
    watcher_module.Watcher._trigger = timed  # type: ignore[method-assign]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with nanscope.watch(model, optimizer, policy="warn") as watcher:
                train()
    finally:
        watcher_module.Watcher._trigger = original  # type: ignore[method-assign]
        for h in handles:
            h.remove()
    report = watcher.close()
    per_iteration = len(_optimizers(optimizer))
    ends = stamps[per_iteration - 1 :: per_iteration]
    step = statistics.median(b - a for a, b in zip(ends, ends[1:], strict=False))
    return DiagnosisTiming(name, report.cause.kind if report.cause else "-", step, spent[0])


def measure(name: str, rounds: int = 5) -> DiagnosisTiming:
    """The median (by ratio) of ``rounds`` runs of the scenario."""
    if str(SCENARIOS) not in sys.path:
        sys.path.insert(0, str(SCENARIOS))
    module = importlib.import_module(name)
    timings = sorted((_one_round(name, module) for _ in range(rounds)), key=lambda t: t.ratio)
    return timings[len(timings) // 2]


def faulty_scenarios() -> list[str]:
    if str(SCENARIOS) not in sys.path:
        sys.path.insert(0, str(SCENARIOS))
    names = sorted(p.stem for p in SCENARIOS.glob("[a-z]*.py"))
    return [n for n in names if "verdict" not in importlib.import_module(n).EXPECT]
