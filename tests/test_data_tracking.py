"""Which dataset samples were in a batch: every way a DataLoader can be built, with workers and without."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset

import nanscope

DIRTY = (11, 42)


class Dirty(Dataset):
    """Sample i is the vector [i, i, i]; the DIRTY ones hold NaN."""

    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.full((3,), float("nan") if i in DIRTY else float(i))
        return x, torch.tensor([float(i)])


def train(loader, epochs: int = 2) -> nanscope.Report:
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
    seen: list[list[int]] = []
    with pytest.raises(nanscope.NonFiniteError) as info, nanscope.watch(model, optimizer):
        for _ in range(epochs):
            for x, y in loader:
                seen.append(y.reshape(-1).int().tolist())  # the dataset's own record of who is in the batch
                nn.functional.mse_loss(model(x), y).backward()
                optimizer.step()
                optimizer.zero_grad()
    report = info.value.report
    batch = seen[report.first_nonfinite.step]
    assert list(report.cause.samples) == sorted(set(batch) & set(DIRTY))
    return report


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("shuffle", [False, True])
def test_indices_for_shuffled_and_ordered_loaders(workers, shuffle):
    train(DataLoader(Dirty(), batch_size=8, shuffle=shuffle, num_workers=workers))


def test_out_of_order_workers():
    if "in_order" not in inspect.signature(DataLoader).parameters:
        pytest.skip("this torch has no DataLoader(in_order=...)")
    train(DataLoader(Dirty(), batch_size=4, shuffle=True, num_workers=2, in_order=False))


def test_persistent_workers_second_epoch():
    loader = DataLoader(Dirty(), batch_size=16, shuffle=True, num_workers=2, persistent_workers=True)
    for _ in loader:  # epoch one, unwatched: the workers (and their task numbering) carry over
        pass
    train(loader, epochs=1)


def test_weighted_sampler_with_replacement():
    weights = torch.ones(64)
    weights[list(DIRTY)] = 50.0
    sampler = torch.utils.data.WeightedRandomSampler(
        weights, num_samples=64, generator=torch.Generator().manual_seed(1)
    )
    train(DataLoader(Dirty(), batch_size=8, sampler=sampler))


class Stream(IterableDataset):
    def __iter__(self):
        for i in range(32):
            yield torch.full((3,), float("nan") if i == 13 else 1.0), torch.tensor([0.0])


def test_iterable_datasets_have_no_indices_so_rows_are_named():
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
    with pytest.raises(nanscope.NonFiniteError) as info, nanscope.watch(model, optimizer):
        for x, y in DataLoader(Stream(), batch_size=8):
            nn.functional.mse_loss(model(x), y).backward()
            optimizer.step()
    cause = info.value.report.cause
    assert cause.kind == "nonfinite_input" and cause.samples is None
    assert info.value.report.first_nonfinite.step == 1 and "batch rows 5" in cause.summary
