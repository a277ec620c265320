"""Recovery: what a snapshot costs, how early the spike detector warns, and the recovery runs' outcomes.

Snapshot cost: one ``rollback`` snapshot of a benchmark workload's full state (weights, buffers, optimizer
state, RNG), in memory and written to disk (temporary file, fsync, rename), as a multiple of the median
training step of the same workload, with its size. Lead time: the steps between the first early warning and
the first non-finite value, on the zoo's explosion scenarios. False warnings: early
warnings raised over healthy runs (the zoo's healthy controls and every benchmark workload). Recovery runs:
the jobs in ``tests/recovery`` plain (they die), under a policy, and on clean data (or at a sane rate).
"""

from __future__ import annotations

import importlib
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from workloads import Workload

import nanscope
from nanscope.recover.policy import RollbackOptions
from nanscope.recover.snapshot import Snapshots, State

TESTS = Path(__file__).resolve().parent.parent / "tests"
for folder in (TESTS / "scenarios", TESTS / "recovery"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))


@dataclass(frozen=True)
class SnapshotCost:
    workload: str
    step_seconds: float
    memory_seconds: float
    disk_seconds: float
    nbytes: int


def snapshot_cost(workload: Workload, steps: int = 10) -> SnapshotCost:
    batches = workload.batches()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        workload.step(next(batches))
        times.append(time.perf_counter() - start)
    state = State(list(workload.model.parameters()), list(workload.model.buffers()), [workload.optimizer])
    memory = Snapshots(RollbackOptions(keep=1))
    for i in range(3):
        memory.take(i, state)
    with tempfile.TemporaryDirectory() as tmp:
        disk = Snapshots(RollbackOptions(keep=1, directory=tmp))
        for i in range(3):
            disk.take(i, state)
        disk.close()
    return SnapshotCost(
        workload.name,
        statistics.median(times),
        memory.seconds / memory.taken,
        disk.seconds / disk.taken,
        memory.items[-1].nbytes,
    )


def lead_time(scenario: str) -> tuple[int | None, int | None]:
    """(steps from the first early warning to the first NaN, first NaN step) for a zoo scenario."""
    module = importlib.import_module(scenario)
    model, optimizer, train = module.setup()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with nanscope.watch(model, optimizer, policy="warn") as w:
            train()
    report = w.report()
    first = report.first_nonfinite.step if report.first_nonfinite else None
    linked = [e.nonfinite_after for e in report.early_warnings if e.nonfinite_after is not None]
    return (max(linked) if linked else None), first


def healthy_scenarios() -> list[str]:
    names = sorted(p.stem for p in (TESTS / "scenarios").glob("[a-z]*.py"))
    return [n for n in names if "verdict" in importlib.import_module(n).EXPECT]


def false_warnings_zoo(names: list[str]) -> int:
    count = 0
    for name in names:
        model, optimizer, train = importlib.import_module(name).setup()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with nanscope.watch(model, optimizer) as w:
                train()
        count += len(w.report().early_warnings)
    return count


def false_warnings_workload(workload: Workload, steps: int) -> int:
    batches = workload.batches()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with nanscope.watch(workload.model, workload.optimizer) as w:
            for _ in range(steps):
                workload.step(next(batches))
    return len(w.report().early_warnings)


@dataclass(frozen=True)
class RecoveryRun:
    job: str
    policy: str
    metric: str
    plain: float
    baseline: float
    recovered: float
    interventions: str
    seconds_lost: float


def recovery_run(
    job: str, policy: str, metric: str, baseline_kwargs: dict, kwargs: dict | None = None
) -> RecoveryRun:
    module = importlib.import_module(job)
    kwargs = kwargs or {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = module.run(**kwargs)[metric]
        baseline = module.run(**baseline_kwargs)[metric]
        with nanscope.watch(None, None, policy=policy) as w:
            recovered = module.run(**kwargs)[metric]
    report = w.report()
    kinds: dict[str, int] = {}
    for i in report.interventions:
        kinds[i.kind] = kinds.get(i.kind, 0) + 1
    done = ", ".join(f"{n} {k}" for k, n in kinds.items()) or "none"
    lost = report.outcome.seconds_lost if report.outcome else 0.0
    return RecoveryRun(job, policy, metric, plain, baseline, recovered, done, lost)


def lr_grid() -> list[RecoveryRun]:
    """Runs started at several times their stable learning rate, under ``rollback``: least squares at 1.5x-10x
    the stability limit (baseline: 0.75x) and a tanh MLP with momentum at 1.5x-10x its largest stable rate
    (baseline: that rate)."""
    runs = [
        recovery_run("lr_too_high", "rollback", "loss", {"factor": 0.75}, {"factor": f})
        for f in (1.5, 2.0, 3.0, 5.0, 10.0)
    ]
    runs += [
        recovery_run("mlp_too_high", "rollback", "loss", {"factor": 1.0}, {"factor": f})
        for f in (1.5, 2.5, 5.0, 10.0)
    ]
    return runs


if __name__ == "__main__":  # python bench/recovery.py: the learning-rate grid alone
    print("| job | x stable rate | plain | rollback | clean at a stable rate | ratio | interventions |")
    print("|---|---|---|---|---|---|---|")
    for r, f in zip(lr_grid(), (1.5, 2.0, 3.0, 5.0, 10.0, 1.5, 2.5, 5.0, 10.0), strict=True):
        print(
            f"| {r.job} | {f:g} | {r.plain:.4g} | {r.recovered:.6g} | {r.baseline:.6g} | "
            f"{r.recovered / r.baseline:.4f} | {r.interventions} |"
        )
