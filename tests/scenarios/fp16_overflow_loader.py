"""Seed 004: a float16 model part; one sample's activations pass 65504 and overflow to inf."""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from _common import loop, mse

BIG = (2,)
BATCH = 4
EXPECT = {
    "kind": "overflow",
    "where": "loss",
    "phase": "forward",
    "step": 0,
    "op": "pow",
    "module": "energy",
    "samples": list(BIG),
}
EXPECT_WARN = {"kind": "undetermined", "op": None, "module": None, "samples": None}


class HalfEnergy(nn.Module):
    def forward(self, h):
        return (h.half() ** 2).sum(1, keepdim=True).float()  # float16 tops out at 65504


class Regressor(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Linear(4, 4)
        self.energy = HalfEnergy()

    def forward(self, x):
        return self.energy(self.proj(x))


def setup():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 4, generator=g)
    x[list(BIG)] *= 2000.0
    y = torch.randn(16, 1, generator=g)
    model = Regressor()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH)

    train = loop(model, optimizer, lambda: loader, mse, epochs=1)
    return model, optimizer, train


if __name__ == "__main__":
    setup()[2]()
