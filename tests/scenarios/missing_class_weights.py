"""Seed 003 section 3: the loss is normalized by each label's frequency in the batch; a batch without
label 2 divides 0 by 0. A property of the whole batch, not of any sample."""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from _common import loop

BATCH = 8
EXPECT = {
    "kind": "domain_error",
    "where": "loss",
    "phase": "loss",
    "step": 1,
    "op": "div",
    "module": None,
    "samples": None,
}
EXPECT_WARN = {"kind": "undetermined", "op": None, "module": None}


def frequency_weighted_ce(model, batch):
    x, y = batch
    per_sample = nn.functional.cross_entropy(model(x), y, reduction="none")
    onehot = nn.functional.one_hot(y, 3).float()
    per_class = per_sample @ onehot  # summed loss of each class
    freq = onehot.sum(0)  # 0 for a class missing from the batch
    return (per_class / freq).sum()


def setup():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 5, generator=g)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1] + [0, 1, 0, 1, 0, 1, 0, 1] + [2, 1, 0, 2, 1, 0, 2, 1] * 2)
    torch.manual_seed(0)
    model = nn.Linear(5, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH)

    train = loop(model, optimizer, lambda: loader, frequency_weighted_ce, epochs=1)
    return model, optimizer, train


if __name__ == "__main__":
    setup()[2]()
