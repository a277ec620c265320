"""Time to diagnosis on every faulty scenario of the zoo, as a multiple of one ordinary step of that scenario.

An ordinary step is the median interval between consecutive ``optimizer.step()`` completions in a run under
``policy="warn"`` (which goes on after the NaN). The time to diagnosis comes from a run under ``policy="stop"``:
from the first trigger to the ``NonFiniteError`` reaching the script, so it includes the exact checks and,
where the step is replayed (op-level kinds), the rest of the failing step and the whole replayed step under
op tracing. The extra peak memory is the rise of the process's peak RSS (VmHWM) over that interval.
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
from nanscope.watching import engine as engine_module

SCENARIOS = Path(__file__).resolve().parent.parent / "tests" / "scenarios"


@dataclass(frozen=True)
class DiagnosisTiming:
    scenario: str
    kind: str
    step_seconds: float
    diagnosis_seconds: float
    replayed: bool
    peak_rise_mib: float

    @property
    def ratio(self) -> float:
        return self.diagnosis_seconds / self.step_seconds


def _optimizers(opt: object) -> list:
    return list(opt) if isinstance(opt, (list, tuple)) else [opt]


def _peak_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024
    return 0.0


def _step_seconds(module: object) -> float:
    model, optimizer, train = module.setup()  # type: ignore[attr-defined]
    stamps: list[float] = []

    def stamp(*args: object) -> None:
        stamps.append(time.perf_counter())

    handles = [o.register_step_post_hook(stamp) for o in _optimizers(optimizer)]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with nanscope.watch(model, optimizer, policy="warn"):
                train()
    finally:
        for h in handles:
            h.remove()
    per_iteration = len(_optimizers(optimizer))
    ends = stamps[per_iteration - 1 :: per_iteration]
    return statistics.median(b - a for a, b in zip(ends, ends[1:], strict=False))


def _one_round(name: str, module: object) -> DiagnosisTiming:
    model, optimizer, train = module.setup()  # type: ignore[attr-defined]
    started: list[float] = []
    peak: list[float] = []
    original = engine_module.Engine._trip

    def timed(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        if not started:
            peak.append(_peak_mib())
            started.append(time.perf_counter())
        return original(self, *args, **kwargs)

    engine_module.Engine._trip = timed  # type: ignore[method-assign]
    try:
        with nanscope.watch(model, optimizer) as watcher:
            train()
    except nanscope.NonFiniteError as exc:
        ended = time.perf_counter()
        report = exc.report
    else:
        raise AssertionError(f"{name} did not stop")
    finally:
        engine_module.Engine._trip = original  # type: ignore[method-assign]
    del watcher
    replayed = report.cause is not None and report.cause.op is not None
    return DiagnosisTiming(
        name,
        report.cause.kind if report.cause else "-",
        _step_seconds(module),
        ended - started[0],
        replayed,
        _peak_mib() - peak[0],
    )


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
