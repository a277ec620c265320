"""Shared pieces of the loop-shape scenarios: a classification set with chosen bad samples, a small MLP."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

N = 96
BATCH = 8


def classification(dirty: tuple[int, ...] = (), saturating: tuple[int, ...] = ()) -> TensorDataset:
    """4 features, 3 classes. ``dirty`` rows hold a NaN; ``saturating`` rows drive a softmax to an exact 0."""
    g = torch.Generator().manual_seed(0)
    x = 0.1 * torch.randn(N, 4, generator=g)
    y = torch.randint(0, 3, (N,), generator=g)
    for i in dirty:
        x[i, 1] = float("nan")
    for i in saturating:
        x[i] = torch.tensor([-200.0, 200.0, 0.0, 0.0])
        y[i] = 0
    return TensorDataset(x, y)


def linear() -> nn.Module:
    model = nn.Linear(4, 3)
    with torch.no_grad():
        model.weight.copy_(torch.eye(3, 4))
        model.bias.zero_()
    return model


def loader(dataset: TensorDataset, shuffle: bool = False) -> DataLoader:
    g = torch.Generator().manual_seed(1)
    return DataLoader(dataset, batch_size=BATCH, shuffle=shuffle, generator=g)


def hand_written_ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """-log(softmax) by hand: log(0) where a row's softmax underflowed (the seeds' log(softmax) trap)."""
    p = torch.softmax(logits, dim=1)
    return -torch.log(p[torch.arange(len(y)), y]).mean()
