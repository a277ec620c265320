"""Every dirty sample at once: after a ``nonfinite_input`` diagnosis, the rest of the dataset is read.

The seeds' author found dirty samples one crash at a time, with ``batch_size=1, shuffle=False``, for days.
Once a batch is known to hold NaN/Inf, nanscope reads the whole Dataset through its own ``__getitem__`` (so
the Dataset's transforms run, as they do in training) and names every sample whose tensors hold NaN/Inf.
The scan is bounded in time (the report says how much of the dataset it covered), shows a progress bar on
an interactive terminal (rich, when installed), and leaves every random stream as it found it (torch,
Python, NumPy), so that random transforms it triggers do not change the run. A sample whose
``__getitem__`` raises is counted, not fatal.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch

from nanscope._tree import iter_tensors
from nanscope.localize.replay import RngState
from nanscope.report.model import DatasetScan

__all__ = ["dirty", "scan_dataset"]


def dirty(sample: Any, _depth: int = 0) -> bool:
    """Whether a sample (tensors, NumPy arrays and floats, nested in tuples, lists, dicts, dataclasses) holds
    NaN/Inf."""
    if isinstance(sample, torch.Tensor):
        d = sample.detach()
        return (d.is_floating_point() or d.is_complex()) and not bool(torch.isfinite(d).all())
    if isinstance(sample, float):
        return not math.isfinite(sample)
    if type(sample).__module__ == "numpy" and getattr(sample, "dtype", None) is not None:
        return sample.dtype.kind in "fc" and not bool(torch.isfinite(torch.as_tensor(sample)).all())
    if _depth > 6 or isinstance(sample, (str, bytes)):
        return False
    if isinstance(sample, Mapping):
        return any(dirty(v, _depth + 1) for v in sample.values())
    if isinstance(sample, (list, tuple)):
        return any(dirty(v, _depth + 1) for v in sample)
    return any(dirty(t) for _, t in iter_tensors(sample))  # dataclasses


class _Verdicts(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """``dataset[i]`` read and judged where it is read (a worker process): only ``(dirty, failed)`` travels."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[bool, bool]:
        try:
            return dirty(self.dataset[i]), False
        except Exception:  # a broken sample is a finding of its own, not nanscope's failure
            return False, True


def _verdicts(dataset: Any, total: int, workers: int) -> Iterator[tuple[bool, bool]]:
    if workers <= 0:
        judge = _Verdicts(dataset)
        return (judge[i] for i in range(total))
    loader = torch.utils.data.DataLoader(
        _Verdicts(dataset), batch_size=None, num_workers=workers, collate_fn=lambda v: v
    )
    return iter(loader)


def scan_dataset(
    dataset: Any,
    *,
    known: Iterable[int] = (),
    seconds: float = 30.0,
    progress: bool | None = None,
    clock: Callable[[], float] = time.monotonic,
    workers: int = 0,
) -> DatasetScan | None:
    """Read ``dataset[i]`` for every index (in order) for at most ``seconds``; ``known`` dirty indices are
    reported whether or not the scan reached them. None when the dataset has no length or no
    ``__getitem__`` (an ``IterableDataset``). ``progress=None`` shows a bar when stderr is a terminal.
    ``workers`` > 0 reads in that many worker processes (as the training DataLoader does), each judging its
    samples where it reads them."""
    try:
        total = len(dataset)
    except TypeError:
        return None
    if not callable(getattr(dataset, "__getitem__", None)):
        return None
    found = set(known)
    scanned = failed = 0
    start = clock()
    with RngState.kept(numpy=True), _bar(total, progress) as advance:
        verdicts = _verdicts(dataset, total, workers) if seconds > 0 else iter(())
        for i in range(total):
            verdict = next(verdicts, None) if clock() - start <= seconds else None
            if verdict is None:
                break
            bad, broken = verdict
            failed += broken
            if bad:
                found.add(i)
            scanned += 1
            advance()
        del verdicts  # a DataLoader's workers shut down
    return DatasetScan(
        dataset=type(dataset).__name__,
        total=total,
        scanned=scanned,
        dirty=tuple(sorted(found)),
        seconds=round(clock() - start, 3),
        failed=failed,
    )


@contextlib.contextmanager
def _bar(total: int, progress: bool | None) -> Iterator[Callable[[], None]]:
    show = sys.stderr.isatty() if progress is None else progress
    rich_progress = None
    if show:
        try:
            from rich.console import Console
            from rich.progress import Progress
        except ImportError:
            show = False
        else:
            rich_progress = Progress(transient=True, console=Console(stderr=True))
    if not show or rich_progress is None:
        yield lambda: None
        return
    with rich_progress:
        task = rich_progress.add_task("nanscope: scanning the dataset for NaN/Inf", total=total)
        yield lambda: rich_progress.advance(task)
