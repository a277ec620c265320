"""Seed 000 at full speed: dirty samples, shuffle=True and two worker processes; the batch order is random."""

import torch
from torch.utils.data import DataLoader, TensorDataset
from _common import loop, mlp, mse, regression_data

DIRTY = (5, 61, 100, 127)
BATCH = 8
SEED = 123
EXPECT = {
    "kind": "nonfinite_input",
    "where": "inputs",
    "phase": "data",
    "dirty": DIRTY,
    "batch": BATCH,
    "seed": SEED,
}


def setup():
    x, y = regression_data()
    x[list(DIRTY)] = float("inf")
    model = mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(
        TensorDataset(x, y),
        batch_size=BATCH,
        shuffle=True,
        num_workers=2,
        generator=torch.Generator().manual_seed(SEED),
    )
    return model, optimizer, loop(model, optimizer, lambda: loader, mse)


if __name__ == "__main__":
    setup()[2]()
