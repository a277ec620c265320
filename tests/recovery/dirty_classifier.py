"""Measure (a): a classifier whose training set holds a few NaN samples (a dead sensor, seed 000).

Plain PyTorch: the first dirty sample turns the loss NaN and the run dies (chance accuracy). Under
``quarantine`` (+``skip`` or +``rollback``) the culprits are excluded and the run finishes. The baseline is
the same run on the clean data (the dirty samples removed).
"""

import json
import sys

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset

DIRTY = (300, 1201, 2950)
N, DIM, CLASSES = 3072, 16, 4
EPOCHS, BATCH = 4, 64


def data():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(CLASSES, DIM, generator=g) * 1.2
    y = torch.randint(0, CLASSES, (N + 1024,), generator=g)
    x = centers[y] + torch.randn(N + 1024, DIM, generator=g)
    train = TensorDataset(x[:N].clone(), y[:N])
    test = (x[N:], y[N:])
    train.tensors[0][list(DIRTY), 5] = float("nan")
    return train, test


def run(clean=False):
    torch.manual_seed(0)
    train, (tx, ty) = data()
    if clean:
        train = Subset(train, [i for i in range(N) if i not in DIRTY])
    model = nn.Sequential(nn.Linear(DIM, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, CLASSES))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    loader = DataLoader(train, batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(1))
    for _ in range(EPOCHS):
        for x, y in loader:
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        logits = model(tx)
    return {
        "accuracy": float((logits.argmax(1) == ty).float().mean()),
        "finite": bool(torch.isfinite(logits).all()),
    }


if __name__ == "__main__":
    print(json.dumps(run(clean="--clean" in sys.argv)))
