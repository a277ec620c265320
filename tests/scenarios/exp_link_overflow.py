"""Issue 13: a count regressor with an `exp` output link. Two unnormalized samples drive its input to
~100, exp makes predictions near 1e43... the squared-error loss then overflows float32. The loss op only
surfaces the problem: the origin a practitioner changes is the link (provenance of extreme values)."""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from _common import loop

LOUD = (3, 6)
BATCH = 8
EXPECT = {
    "kind": "overflow",
    "where": "loss",
    "phase": "forward",
    "step": 3 // BATCH,
    "op": "exp",
    "module": "link",
    "samples": list(LOUD),
}
EXPECT_WARN = {
    "kind": "undetermined",
    "op": None,
    "module": None,
    "samples": None,
    "phase": "loss",
}  # no replay under warn


class ExpLink(nn.Module):
    def forward(self, z):
        return torch.exp(z)


class CountRegressor(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Linear(6, 1)
        self.link = ExpLink()

    def forward(self, x):
        return self.link(self.body(x))


def setup():
    g = torch.Generator().manual_seed(0)
    x = 0.2 * torch.randn(32, 6, generator=g)
    y = torch.poisson(torch.full((32, 1), 3.0), generator=g)
    model = CountRegressor()
    with torch.no_grad():
        model.body.weight.fill_(0.5)
        model.body.bias.zero_()
    x[list(LOUD)] = 20.0  # raw counts where standardized features were expected: z = 60
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH)

    def loss_fn(m, batch):
        return ((m(batch[0]) - batch[1]) ** 2).mean()

    return model, optimizer, loop(model, optimizer, lambda: loader, loss_fn, epochs=1)


if __name__ == "__main__":
    setup()[2]()
