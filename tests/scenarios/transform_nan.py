"""A Dataset transform makes the NaN: per-sample standardization of a constant sample is 0/0."""

import torch
from torch.utils.data import DataLoader, Dataset
from _common import loop, mlp, mse, regression_data

FLAT = (9, 44)
BATCH = 4
EXPECT = {
    "kind": "nonfinite_input",
    "where": "inputs",
    "phase": "data",
    "step": 9 // BATCH,
    "samples": [9],
    "names": ["batch[0]"],
}


class Standardized(Dataset):
    def __init__(self):
        self.x, self.y = regression_data(64)
        self.x[list(FLAT)] = 2.0  # a constant row: its std is 0

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        row = self.x[i]
        return (row - row.mean()) / row.std(), self.y[i]


def setup():
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    loader = DataLoader(Standardized(), batch_size=BATCH)
    return model, optimizer, loop(model, optimizer, lambda: loader, mse)


if __name__ == "__main__":
    setup()[2]()
