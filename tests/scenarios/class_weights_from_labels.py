"""Issue 13: class weights computed in the training loop from the batch's labels (inverse frequency,
normalized). A batch without class 2 makes 1 / 0 = inf before the model runs; the normalization turns it
into NaN weights and the loss into NaN. The origin is in the loop's own data handling (phase `data`), and
it is a property of the batch, not of any sample."""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from _common import loop

BATCH = 8
EXPECT = {
    "kind": "domain_error",
    "where": "loss",
    "phase": "data",
    "step": 1,
    "op": "reciprocal",
    "module": None,
    "samples": None,
}
EXPECT_WARN = {"kind": "undetermined", "op": None, "module": None, "phase": "loss"}


def balanced_ce(model, batch):
    x, y = batch
    weight = 1.0 / torch.bincount(y, minlength=3).float()  # inf for a class absent from the batch
    weight = weight / weight.sum()
    return nn.functional.cross_entropy(model(x), y, weight=weight)


def setup():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 5, generator=g)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1] + [0, 1, 0, 1, 0, 1, 0, 1] + [2, 1, 0, 2, 1, 0, 2, 1] * 2)
    torch.manual_seed(0)
    model = nn.Linear(5, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH)
    return model, optimizer, loop(model, optimizer, lambda: loader, balanced_ce, epochs=1)


if __name__ == "__main__":
    setup()[2]()
