"""The LR finder's suggestion against a grid of real short training runs, for several model kinds.

For each kind: ``nanscope.lr_find`` from 1e-7 to 10 over 100 steps (model and optimizer put back), then one short
training run per grid LR (1e-5 .. 3, half decades, fresh model each, same data order) scored by its mean loss
over the last 20 steps. The *good range* is the grid LRs whose final loss reaches at least 80 % of the best run's
fall from the first loss; a run whose loss turns NaN/Inf is *divergent*. ``python bench/lr_find.py`` prints the
grid; ``tests/test_lr_find.py`` asserts on the same computation (``grid``).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import nanscope

GRID = tuple(10 ** (e / 2) for e in range(-10, 2))  # 1e-5 .. 3.16


def _data(kind: str) -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2048, 16, generator=g)
    y = (x @ torch.randn(16, 4, generator=g)).argmax(1)
    if kind == "cnn":
        x = x.reshape(-1, 1, 4, 4)
    elif kind == "lstm":
        x = x.reshape(-1, 4, 4)
    return TensorDataset(x, y)


class _Lstm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn, self.head = nn.LSTM(4, 32, batch_first=True), nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0][:, -1])


def _model(kind: str) -> nn.Module:
    torch.manual_seed(0)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))
    if kind == "cnn":
        return nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),
            nn.ReLU(), nn.Flatten(), nn.Linear(256, 4),
        )  # fmt: skip
    return _Lstm()


OPTIMIZERS: dict[str, Callable[[list[torch.Tensor], float], torch.optim.Optimizer]] = {
    "mlp": lambda p, lr: torch.optim.Adam(p, lr=lr),
    "cnn": lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9),
    "lstm": lambda p, lr: torch.optim.Adam(p, lr=lr),
}
KINDS = tuple(OPTIMIZERS)


def _train(kind: str, lr: float, steps: int) -> tuple[float, float]:
    """(first loss, mean loss of the last 20 steps; inf when the run turned non-finite)."""
    model = _model(kind)
    opt = OPTIMIZERS[kind](list(model.parameters()), lr)
    loader = DataLoader(_data(kind), batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(2))
    losses: list[float] = []
    while len(losses) < steps:
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            losses.append(float(loss.detach()))
            if not math.isfinite(losses[-1]):
                return losses[0], math.inf
            opt.zero_grad()
            loss.backward()
            opt.step()
            if len(losses) == steps:
                break
    return losses[0], sum(losses[-20:]) / 20


@dataclass(frozen=True)
class Row:
    kind: str
    suggested: float | None
    diverged_at: float | None
    finals: dict[float, float]
    good: tuple[float, ...]
    nonfinite_from: float | None

    @property
    def best(self) -> float:
        return min(self.finals, key=self.finals.__getitem__)

    def in_good_range(self) -> bool:
        """The suggestion lies between the smallest and the largest good grid LR (within half a decade)."""
        if self.suggested is None:
            return False
        return min(self.good) / 10**0.5 <= self.suggested <= max(self.good) * 10**0.5


def grid(kind: str, steps: int = 150) -> Row:
    model = _model(kind)
    opt = OPTIMIZERS[kind](list(model.parameters()), 1e-3)
    loader = DataLoader(_data(kind), batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(2))
    found = nanscope.lr_find(model, opt, loader, F.cross_entropy)
    finals: dict[float, float] = {}
    first = math.nan
    for lr in GRID:
        first, finals[lr] = _train(kind, lr, steps)
    best = min(finals.values())
    good = tuple(lr for lr, v in finals.items() if v <= best + 0.2 * (first - best))
    bad = [lr for lr, v in finals.items() if not math.isfinite(v)]
    return Row(kind, found.suggested_lr, found.diverged_at, finals, good, min(bad) if bad else None)


def main() -> None:
    print(
        "| model | suggested | finder diverged at | good range (grid) | best grid LR | first NaN run | final at suggestion's grid neighbour / best |"
    )
    print("|---|---|---|---|---|---|---|")
    for kind in KINDS:
        row = grid(kind)
        s = row.suggested or math.nan
        near = min(GRID, key=lambda lr: abs(math.log10(lr) - math.log10(s))) if row.suggested else None
        ratio = f"{row.finals[near] / row.finals[row.best]:.3g}" if near else "-"
        print(
            f"| {kind} ({type(OPTIMIZERS[kind]([torch.zeros(1, requires_grad=True)], 1.0)).__name__}) | {s:.3g} | "
            f"{row.diverged_at or math.nan:.3g} | {min(row.good):.3g} .. {max(row.good):.3g} | {row.best:.3g} | "
            f"{row.nonfinite_from or math.nan:.3g} | {ratio} |"
        )
        sys.stdout.flush()


if __name__ == "__main__":
    main()
