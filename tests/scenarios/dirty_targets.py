"""Seed 003 section 4: the inputs are clean but two regression targets are NaN."""

import torch
from torch.utils.data import DataLoader, TensorDataset
from _common import loop, mlp, mse, regression_data

DIRTY = (70, 75)
BATCH = 32
EXPECT = {
    "kind": "nonfinite_input",
    "where": "inputs",
    "phase": "data",
    "step": 70 // BATCH,
    "samples": [70, 75],
    "names": ["batch[1]"],
}


def setup():
    x, y = regression_data()
    y[list(DIRTY)] = float("nan")
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH)
    return model, optimizer, loop(model, optimizer, lambda: loader, mse)


if __name__ == "__main__":
    setup()[2]()
