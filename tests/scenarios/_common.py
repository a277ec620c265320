"""Shared pieces of the scenarios: a tiny regression set and MLP, and a plain training loop."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn


def regression_data(n: int = 128, features: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    w = torch.randn(features, 1, generator=g)
    return x, x @ w + 0.1 * torch.randn(n, 1, generator=g)


def mlp(features: int = 8, hidden: int = 16, out: int = 1) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(features, hidden), nn.Tanh(), nn.Linear(hidden, out))


def loop(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Callable[[], Iterable[Any]],
    loss_fn: Callable[[nn.Module, Any], torch.Tensor],
    epochs: int = 2,
    scheduler: Any = None,
) -> Callable[[], None]:
    def train() -> None:
        for _ in range(epochs):
            for batch in batches():
                loss = loss_fn(model, batch)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()

    return train


def mse(model: nn.Module, batch: Any) -> torch.Tensor:
    x, y = batch
    return nn.functional.mse_loss(model(x), y)
