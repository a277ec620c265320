"""Healthy control: an MLP with dropout, shuffling and AdamW; nanscope must change nothing."""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from _common import loop, mse, regression_data

EXPECT = {"verdict": "healthy"}


def setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 1))
    optimizer = torch.optim.AdamW(
        [
            {"params": model[0].parameters(), "lr": 1e-3},
            {"params": model[3].parameters(), "lr": 5e-4, "weight_decay": 0.0},
        ]
    )
    x, y = regression_data()
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)
    return model, optimizer, loop(model, optimizer, lambda: loader, mse, epochs=3)


if __name__ == "__main__":
    setup()[2]()
