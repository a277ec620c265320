"""Measure (b): least squares with an SGD learning rate 1.5x above the stability limit 2 / lambda_max.

Plain PyTorch: the weights oscillate with growing amplitude until the loss overflows and the run dies.
Under ``rollback`` the last good snapshot is restored with the rate divided by the grad norm's measured
growth per step (which is 2x - 1 for gradient descent at x times the limit), and the run converges. The
baseline is the run at 0.75x the limit.
"""

import json
import sys

import torch

N, DIM, STEPS = 2048, 32, 600


def data():
    g = torch.Generator().manual_seed(0)
    scales = torch.linspace(0.2, 3.0, DIM)
    x = torch.randn(N, DIM, generator=g) * scales
    w = torch.randn(DIM, 1, generator=g)
    y = x @ w + 0.1 * torch.randn(N, 1, generator=g)
    return x, y


def limit(x):
    """The largest learning rate at which full-batch gradient descent on the MSE is stable."""
    curvature = torch.linalg.eigvalsh(2 * x.T @ x / len(x)).max()
    return float(2 / curvature)


def run(factor=1.5):
    torch.manual_seed(0)
    x, y = data()
    model = torch.nn.Linear(DIM, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=factor * limit(x))
    for _ in range(STEPS):  # full-batch gradient descent
        loss = torch.nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        final = float(torch.nn.functional.mse_loss(model(x), y))
    return {"loss": final, "finite": bool(torch.isfinite(torch.tensor(final)))}


if __name__ == "__main__":
    print(json.dumps(run(factor=0.75 if "--clean" in sys.argv else 1.5)))
