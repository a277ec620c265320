"""Every dirty sample at once (issue 13 item 9): after a nonfinite_input diagnosis the whole dataset is read
through its own __getitem__, every sample holding NaN/Inf is named, and quarantine takes them all."""

from __future__ import annotations

import random
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset

import nanscope
from nanscope.localize.dataset_scan import dirty, scan_dataset
from nanscope.report.json import dumps, loads

DEAD = (3, 40, 77, 118, 201)


class Readings(Dataset):
    """Per-sample standardization in __getitem__ (0/0 on flat rows), with a random jitter from every global
    stream, as augmentation code does."""

    def __init__(self, n: int = 256) -> None:
        g = torch.Generator().manual_seed(0)
        self.raw = torch.randn(n, 6, generator=g)
        self.raw[list(DEAD)] = 2.0  # flat
        self.y = torch.randn(n, 1, generator=g)

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, i: int):
        x = self.raw[i]
        x = (x - x.mean()) / x.std()
        jitter = 1e-6 * (torch.rand(()) + random.random() + float(np.random.rand()))
        return x + jitter, self.y[i]


def _train(policy: str, **options):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loader = DataLoader(Readings(), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(1))
    watcher = nanscope.watch(model, optimizer, policy=policy, **options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with watcher:
                for _ in range(2):
                    for x, y in loader:
                        optimizer.zero_grad()
                        nn.functional.mse_loss(model(x), y).backward()
                        optimizer.step()
        except nanscope.NonFiniteError as exc:
            return exc.report
    return watcher.close()


def test_a_stop_names_every_dirty_sample_of_the_dataset_not_only_the_batch():
    report = _train("stop")
    assert report.cause is not None and report.cause.kind == "nonfinite_input"
    in_batch = set(report.cause.samples)
    assert in_batch < set(DEAD)  # the failing batch holds some of them
    scan = report.dataset_scan
    assert scan is not None and scan.complete and scan.total == 256 and scan.failed == 0
    assert scan.dirty == DEAD
    assert any(e.label == "dataset scan" for e in report.cause.evidence)
    assert str(list(DEAD)) in report.suggestions[0]
    assert loads(dumps(report)).dataset_scan == scan


def test_quarantine_takes_every_dirty_sample_at_the_first_failure():
    report = _train("quarantine+skip")
    assert report.outcome is not None
    assert report.outcome.quarantined == DEAD
    assert report.outcome.failed_steps == 1  # the others were never drawn again
    assert report.watched_steps == 2 * 256 // 16


def test_the_scan_can_be_turned_off():
    report = _train("stop", scan_seconds=0)
    assert report.cause.kind == "nonfinite_input" and report.dataset_scan is None


def test_the_scan_leaves_every_random_stream_as_it_was():
    np.random.seed(5)
    random.seed(5)
    torch.manual_seed(5)
    expected = (torch.rand(3), random.random(), np.random.rand())
    np.random.seed(5)
    random.seed(5)
    torch.manual_seed(5)
    scan_dataset(Readings(), progress=False)
    assert torch.equal(torch.rand(3), expected[0])
    assert random.random() == expected[1] and np.random.rand() == expected[2]


def test_the_scan_is_bounded_in_time_and_keeps_the_known_samples():
    ticks = iter(range(1000))
    scan = scan_dataset(
        Readings(), known=(201,), seconds=10, progress=False, clock=lambda: float(next(ticks))
    )
    assert scan is not None and not scan.complete and 0 < scan.scanned < 256
    assert scan.dirty == (3, 201)  # 3 found within the budget, 201 known from the diagnosis
    assert "of 256 samples" in scan.text()


def test_broken_samples_are_counted_and_iterable_datasets_are_not_scanned():
    class Flaky(Readings):
        def __getitem__(self, i):
            if i % 50 == 0:
                raise OSError("decode failed")
            return super().__getitem__(i)

    scan = scan_dataset(Flaky(), progress=False)
    assert scan is not None and scan.failed == 6 and scan.dirty == (3, 40, 77, 118, 201)

    class Stream(IterableDataset):
        def __iter__(self):
            yield torch.zeros(2)

    assert scan_dataset(Stream(), progress=False) is None


@pytest.mark.parametrize(
    ("sample", "expected"),
    [
        ((torch.ones(2), torch.tensor([1, 2])), False),
        ({"x": np.array([1.0, np.nan]), "y": 3}, True),
        ([1.0, float("inf")], True),
        ((torch.ones(2), {"mask": torch.tensor([float("-inf")])}), True),
        ("text", False),
    ],
)
def test_dirty_reads_tensors_arrays_and_floats(sample, expected):
    assert dirty(sample) is expected


def test_a_bad_scan_seconds_is_refused():
    with pytest.raises(nanscope.UsageError, match="scan_seconds"):
        nanscope.watch(nn.Linear(2, 2), None, scan_seconds=-1)


class Worker(Readings):
    """Reports which process read each sample (a worker of the scan, not the main process)."""

    def __getitem__(self, i):
        info = torch.utils.data.get_worker_info()
        if info is None:
            raise RuntimeError("read in the main process")
        return super().__getitem__(i)


def test_with_workers_the_scan_reads_in_worker_processes_and_finds_the_same():
    np.random.seed(5)
    torch.manual_seed(5)
    expected = (torch.rand(3), np.random.rand())
    np.random.seed(5)
    torch.manual_seed(5)
    scan = scan_dataset(Worker(), progress=False, workers=2)
    assert scan is not None and scan.failed == 0 and scan.scanned == 256
    assert scan.dirty == scan_dataset(Readings(), progress=False).dirty == (3, 40, 77, 118, 201)
    assert torch.equal(torch.rand(3), expected[0]) and np.random.rand() == expected[1]
    flaky = scan_dataset(Worker(), progress=False, workers=0)  # (the same dataset read in this process fails)
    assert flaky is not None and flaky.failed == 256
    loader = DataLoader(Worker(), batch_size=16, num_workers=2)  # nanscope.check reads as the loader does
    found = {f.code: f for f in nanscope.check(nn.Linear(6, 1), loader).findings}
    assert found["nonfinite_samples"].samples == (3, 40, 77, 118, 201)
