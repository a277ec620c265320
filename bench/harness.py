"""Side-by-side timing: the same training steps under each configuration, interleaved A B A B ...

Every configuration runs in the same process on the same model, optimizer and data, block after block in a
rotating order, after warm-up steps inside each block (so attach-time work such as model discovery is not
counted). Reported: the median seconds per step of each configuration and, per repetition, its ratio to the
bare block of the same repetition (median and min-max of those ratios).
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
from workloads import Workload

import nanscope
from nanscope.watching.hooks import Hooks
from nanscope.watching.watcher import Watcher, _Guarded

Config = Callable[[Workload], AbstractContextManager[object]]


@contextlib.contextmanager
def _closing(watcher: Watcher) -> Iterator[Watcher]:
    try:
        yield watcher
    finally:
        report = watcher.close()
        assert report.verdict == "healthy", report.headline()


CONFIGS: dict[str, Config] = {
    "bare": lambda w: contextlib.nullcontext(),
    "nanscope watch": lambda w: _closing(nanscope.watch(w.model, w.optimizer)),
    "nanscope run": lambda w: _closing(Watcher(None, None)),  # the zero-code machinery: discovery + patches
    "detect_anomaly": lambda w: torch.autograd.detect_anomaly(check_nan=True),
}


@dataclass(frozen=True)
class Timing:
    workload: str
    config: str
    seconds: float  # median per step
    ratio: float  # median over repetitions of config/bare
    ratio_min: float
    ratio_max: float
    tensors: int
    parameters: int


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_block(workload: Workload, config: Config, steps: int, warmup: int) -> float:
    batches = workload.batches()
    with config(workload):
        for _ in range(warmup):
            workload.step(next(batches))
        _sync(workload.device)
        start = time.perf_counter()
        for _ in range(steps):
            workload.step(next(batches))
        _sync(workload.device)
        return (time.perf_counter() - start) / steps


def compare(
    workload: Workload, configs: dict[str, Config], steps: int, warmup: int, repeats: int
) -> list[Timing]:
    names = list(configs)
    times: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(2):  # process warm-up: allocator, caches, lazy inits
        workload.step(next(workload.batches()))
    for rep in range(repeats):
        order = names[rep % len(names) :] + names[: rep % len(names)]
        for name in order:
            times[name].append(time_block(workload, configs[name], steps, warmup))
    bare = times["bare"]
    out = []
    for name in names:
        ratios = [t / b for t, b in zip(times[name], bare, strict=True)]
        out.append(
            Timing(
                workload.name,
                name,
                statistics.median(times[name]),
                statistics.median(ratios),
                min(ratios),
                max(ratios),
                workload.tensors,
                workload.parameters,
            )
        )
    return out


#: every way torch calls into nanscope: the guarded engine events (patches and hooks) and the hook functions
_ENTRY_POINTS = (
    (_Guarded, [n for n in vars(_Guarded) if not n.startswith("_")]),
    (Hooks, ["pre_step", "post_step"]),
)


@contextlib.contextmanager
def _around_entry_points(around: Callable[[], AbstractContextManager[object]]) -> Iterator[None]:
    """Wrap every method through which torch calls into nanscope (before it attaches, since hooks keep the
    function they were given) so that ``around()`` is entered for the duration of each outermost entry."""
    originals = [(owner, name, getattr(owner, name)) for owner, names in _ENTRY_POINTS for name in names]
    depth = [0]

    def wrap(method: Callable[..., object]) -> Callable[..., object]:
        def run(self: object, *args: object, **kwargs: object) -> object:
            if depth[0]:
                return method(self, *args, **kwargs)
            depth[0] += 1
            try:
                with around():
                    return method(self, *args, **kwargs)
            finally:
                depth[0] -= 1

        return run

    try:
        for owner, name, method in originals:
            setattr(owner, name, wrap(method))
        yield
    finally:
        for owner, name, method in originals:
            setattr(owner, name, method)


class _Spent:
    """Seconds spent inside the blocks :meth:`timed` was entered for."""

    def __init__(self) -> None:
        self.seconds = 0.0

    @contextlib.contextmanager
    def timed(self) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - start


@contextlib.contextmanager
def timed_entry_points() -> Iterator[_Spent]:
    """Time every outermost entry into nanscope (hooks attached inside the block) until the block ends."""
    spent = _Spent()
    with _around_entry_points(spent.timed):
        yield spent


def in_entry_points(
    workload: Workload,
    config: str,
    steps: int,
    warmup: int,
    around: Callable[[], AbstractContextManager[object]],
) -> None:
    """Run ``warmup`` and then ``steps`` training steps under ``config``, entering ``around()`` for every
    outermost call into nanscope during the ``steps`` only (attach-time and warm-up work left out)."""
    counting = [False]

    def maybe() -> AbstractContextManager[object]:
        return around() if counting[0] else contextlib.nullcontext()

    with _around_entry_points(maybe):
        batches = workload.batches()
        with CONFIGS[config](workload):
            for _ in range(warmup):
                workload.step(next(batches))
            counting[0] = True
            for _ in range(steps):
                workload.step(next(batches))
            counting[0] = False


def self_time(workload: Workload, config: str, steps: int, warmup: int, repeats: int) -> float:
    """Median over ``repeats`` blocks of the seconds per step spent inside nanscope's hooks (its own work,
    whatever the machine's noise; not the indirect cost of, say, caches it evicts)."""
    results = []
    for _ in range(repeats):
        spent = _Spent()
        in_entry_points(workload, config, steps, warmup, spent.timed)
        results.append(spent.seconds / steps)
    return statistics.median(results)


def sync_count(workload: Workload, config: str, steps: int) -> int:
    """Host-device synchronizations that torch's sync debug mode reports over ``steps`` steps (after warm-up)."""
    import warnings

    batches = workload.batches()
    with CONFIGS[config](workload):
        for _ in range(3):
            workload.step(next(batches))
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                for _ in range(steps):
                    workload.step(next(batches))
            finally:
                torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message).lower() for w in caught)
