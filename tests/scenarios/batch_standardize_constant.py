"""Issue 13: the training loop standardizes each batch by its own statistics before the model runs. In one
batch a feature is constant (a sensor stuck at one value for those rows), its std is 0, and the division
makes 0/0 = NaN in every row. The origin is in the loop's data handling (phase `data`), a property of the
batch: no single sample is the culprit."""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from _common import loop

BATCH = 8
STUCK = range(16, 24)  # the third batch
EXPECT = {
    "kind": "domain_error",
    "where": "loss",
    "phase": "data",
    "step": 16 // BATCH,
    "op": "div",
    "module": None,
    "samples": None,
}
EXPECT_WARN = {"kind": "undetermined", "op": None, "phase": "forward"}  # no replay under warn


def standardized_mse(model, batch):
    x, y = batch
    x = (x - x.mean(0)) / x.std(0)  # no eps
    return nn.functional.mse_loss(model(x), y)


def setup():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 5, generator=g)
    x[list(STUCK), 2] = 1.5
    y = torch.randn(32, 1, generator=g)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH)
    return model, optimizer, loop(model, optimizer, lambda: loader, standardized_mse, epochs=1)


if __name__ == "__main__":
    setup()[2]()
