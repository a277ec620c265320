"""Seed 004: resuming from a checkpoint whose weights hold NaN (saved after the run had diverged)."""

import torch
from _common import loop, mlp, mse, regression_data

EXPECT = {
    "kind": "nonfinite_parameters",
    "where": "parameters",
    "phase": "forward",
    "step": 0,
    "parameter": "2.weight",
}


def setup():
    model = mlp()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["2.weight"][0, 3] = float("nan")
    model.load_state_dict(state)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = regression_data()
    batches = lambda: [(x[i : i + 16], y[i : i + 16]) for i in range(0, len(x), 16)]
    return model, optimizer, loop(model, optimizer, batches, mse)


if __name__ == "__main__":
    setup()[2]()
