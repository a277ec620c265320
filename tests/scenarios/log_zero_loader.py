"""Seed 003 section 8 with a DataLoader: two samples drive a hand-written cross-entropy to log(0)."""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from _common import loop

SATURATING = (17, 20)
BATCH = 8
EXPECT = {
    "kind": "domain_error",
    "where": "loss",
    "phase": "loss",
    "step": 17 // BATCH,
    "op": "log",
    "module": None,
    "samples": list(SATURATING),
}
EXPECT_WARN = {"kind": "undetermined", "op": None, "samples": None}  # no replay under warn


def hand_written_ce(model, batch):
    x, y = batch
    p = torch.softmax(model(x), dim=1)
    return -torch.log(p[torch.arange(len(y)), y]).mean()


def setup():
    g = torch.Generator().manual_seed(0)
    x = 0.1 * torch.randn(64, 4, generator=g)
    x[list(SATURATING)] = torch.tensor([-200.0, 200.0, 0.0, 0.0])  # logits [-200, 200, 0]: p(class 0) = 0
    y = torch.zeros(64, dtype=torch.long)
    model = nn.Linear(4, 3)
    with torch.no_grad():
        model.weight.copy_(torch.eye(3, 4))
        model.bias.zero_()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH)

    train = loop(model, optimizer, lambda: loader, hand_written_ce, epochs=1)
    return model, optimizer, train


if __name__ == "__main__":
    setup()[2]()
