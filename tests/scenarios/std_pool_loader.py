"""Seed 002 with a DataLoader: std-pooling sqrt(mean((x - mean)^2)) on a constant recording; sqrt'(0) = inf."""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from _common import loop, mse

CONSTANT = (5,)
BATCH = 4
EXPECT = {
    "kind": "singular_gradient",
    "where": "gradients",
    "phase": "backward",
    "step": 5 // BATCH,
    "op": "sqrt",
    "module": "pool",
    "samples": list(CONSTANT),
}
EXPECT_WARN = {"kind": "undetermined", "op": None, "module": None, "samples": None}


class StatsPool(nn.Module):
    def forward(self, h):
        mean = h.mean(1, keepdim=True)
        return ((h - mean) ** 2).mean(1).sqrt()


class Speaker(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Linear(6, 4)
        self.pool = StatsPool()
        self.head = nn.Linear(4, 1)

    def forward(self, x):
        return self.head(self.pool(self.proj(x)))


def setup():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 10, 6, generator=g)
    x[list(CONSTANT)] = 0.5  # a constant recording: finite, but its std is 0
    y = torch.randn(32, 1, generator=g)
    model = Speaker()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH)

    train = loop(model, optimizer, lambda: loader, mse, epochs=1)
    return model, optimizer, train


if __name__ == "__main__":
    setup()[2]()
