"""Measure (b'): a small tanh MLP regressor trained full-batch with SGD + momentum 0.9, started at several
times its largest stable learning rate.

On this task plain runs at lr 0.05-0.2 converge and lr 0.3 and above die (NaN by step ~170; 1.5x-10x the
largest stable rate of the grid 0.05, 0.1, 0.2, 0.3). Under ``rollback`` each failure is rolled back to a
snapshot from before the spike that announced it, with the learning rate backed off by the grad norm's
measured growth (at most 4x at once); the baseline is the clean run at lr 0.2.
"""

import json
import sys

import torch
from torch import nn

N, DIM, STEPS = 1024, 8, 1500
STABLE_LR = 0.2  # the largest stable rate of the grid


def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, DIM, generator=g)
    y = torch.sin(1.5 * x[:, :1]) + 0.5 * x[:, 1:2] * x[:, 2:3] + 0.05 * torch.randn(N, 1, generator=g)
    return x, y


def run(factor=1.0):
    torch.manual_seed(0)
    x, y = data()
    model = nn.Sequential(nn.Linear(DIM, 64), nn.Tanh(), nn.Linear(64, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=factor * STABLE_LR, momentum=0.9)
    for _ in range(STEPS):
        loss = nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        final = float(nn.functional.mse_loss(model(x), y))
    return {"loss": final, "finite": bool(torch.isfinite(torch.tensor(final)))}


if __name__ == "__main__":
    print(json.dumps(run(factor=1.0 if "--clean" in sys.argv else 5.0)))
