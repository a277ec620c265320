"""Seed 003 section 2: a polynomial LR schedule without max_iter takes a power of a negative number."""

import torch
from _common import loop, mlp, mse, regression_data

MAX_ITER = 5  # the schedule was written for 5 steps; training runs longer
EXPECT = {
    "kind": "invalid_hyperparameter",
    "where": "hyperparameters",
    "phase": "schedule",
    "step": MAX_ITER + 1,
    "hyperparameter": "lr",
    "names": ["param_groups[0].lr"],
}


def setup():
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    poly = lambda it: (1 - it / MAX_ITER) ** 0.9  # (negative) ** 0.9 is complex in Python ...
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda it: float("nan") if it > MAX_ITER else poly(it)
    )
    x, y = regression_data()
    batches = lambda: [(x[i : i + 8], y[i : i + 8]) for i in range(0, len(x), 8)]
    return model, optimizer, loop(model, optimizer, batches, mse, scheduler=scheduler)


if __name__ == "__main__":
    setup()[2]()
