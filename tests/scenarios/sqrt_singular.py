"""Seed 002: std-pooling written as sqrt(mean((x - mean)^2)) has an infinite derivative on a constant input."""

import torch
from torch import nn
from _common import loop


class StatsPool(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Linear(6, 4)
        self.head = nn.Linear(8, 1)

    def forward(self, x):  # x: (batch, time, 6)
        h = self.proj(x)
        mean = h.mean(1)
        std = ((h - mean.unsqueeze(1)) ** 2).mean(1).sqrt()  # sqrt'(0) = inf for a constant recording
        return self.head(torch.cat([mean, std], 1))


# the batch is the script's own (no DataLoader): the model alone is re-run under op tracing, with the
# gradient that reached its output, which finds sqrt'(0); no dataset indices (observe_batch was not called)
EXPECT = {"kind": "singular_gradient", "where": "gradients", "phase": "backward", "step": 0, "op": "sqrt"}
EXPECT_WARN = {"kind": "undetermined", "op": None}  # no replay under warn


def setup():
    model = StatsPool()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 10, 6, generator=g)
    x[3] = 0.5  # a constant recording (finite!)
    y = torch.randn(8, 1, generator=g)
    loss_fn = lambda m, b: nn.functional.mse_loss(m(b[0]), b[1])
    return model, optimizer, loop(model, optimizer, lambda: [(x, y)], loss_fn)


if __name__ == "__main__":
    setup()[2]()
