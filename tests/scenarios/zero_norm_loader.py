"""Seed 002: an L2-normalization layer divides by the norm, which is 0 for an all-zero feature vector."""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from _common import loop, mse

DEAD = (6, 7)
BATCH = 8
EXPECT = {
    "kind": "domain_error",
    "where": "loss",
    "phase": "forward",
    "step": 0,
    "op": "div",
    "module": "norm",
    "samples": list(DEAD),
}
EXPECT_WARN = {"kind": "undetermined", "op": None, "module": None, "samples": None}


class L2Norm(nn.Module):
    def forward(self, v):
        return v / v.norm(dim=1, keepdim=True)  # no eps


class Embedder(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.norm = L2Norm()
        self.head = nn.Linear(6, 1)

    def forward(self, x):
        return self.head(self.norm(x))


def setup():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(32, 6, generator=g) + 0.1
    x[list(DEAD)] = 0.0  # empty feature vectors
    y = torch.randn(32, 1, generator=g)
    model = Embedder()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH)

    train = loop(model, optimizer, lambda: loader, mse, epochs=1)
    return model, optimizer, train


if __name__ == "__main__":
    setup()[2]()
