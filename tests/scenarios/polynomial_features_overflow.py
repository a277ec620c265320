"""Issue 13: polynomial features x**4 of a raw input. A sample with a value of 3e5 (in a normal range on its
own) becomes 8e21 in the feature layer; the prediction stays finite, and the squared error then overflows.
The loss op only surfaces it: the origin is the `pow` in `features` that took values out of range."""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from _common import loop

RAW = (21,)
BATCH = 8
EXPECT = {
    "kind": "overflow",
    "where": "loss",
    "phase": "forward",
    "step": 21 // BATCH,
    "op": "pow",
    "module": "features",
    "samples": list(RAW),
}
EXPECT_WARN = {
    "kind": "undetermined",
    "op": None,
    "module": None,
    "samples": None,
    "phase": "loss",
}  # no replay under warn


class Quartic(nn.Module):
    def forward(self, x):
        return torch.cat([x, x**2, x**4], dim=1)


class PolyRegressor(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = Quartic()
        self.fit = nn.Linear(9, 1)

    def forward(self, x):
        return self.fit(self.features(x))


def setup():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 3, generator=g)
    x[list(RAW), 0] = 3e5  # an unscaled measurement
    y = torch.randn(32, 1, generator=g)
    model = PolyRegressor()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH)
    return (
        model,
        optimizer,
        loop(model, optimizer, lambda: loader, lambda m, b: ((m(b[0]) - b[1]) ** 2).mean(), epochs=1),
    )


if __name__ == "__main__":
    setup()[2]()
