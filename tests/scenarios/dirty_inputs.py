"""Seed 000: a few dirty samples (NaN features) in an ordered DataLoader."""

from torch.utils.data import DataLoader, TensorDataset

import torch
from _common import loop, mlp, mse, regression_data

DIRTY = (37, 38, 90)
BATCH = 16
EXPECT = {
    "kind": "nonfinite_input",
    "where": "inputs",
    "phase": "data",
    "step": 37 // BATCH,
    "samples": [37, 38],
    "names": ["batch[0]"],
}


def setup():
    x, y = regression_data()
    x[list(DIRTY), 3] = float("nan")
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=False)
    return model, optimizer, loop(model, optimizer, lambda: loader, mse)


if __name__ == "__main__":
    setup()[2]()
