"""Seed 003 section 8: a hand-written cross-entropy takes log(0) once the model is confidently wrong."""

import torch
from torch import nn
from _common import loop

EXPECT = {"kind": "undetermined", "where": "loss", "phase": "loss", "step": 0}


def setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3))
    with torch.no_grad():
        model[0].weight.mul_(200.0)  # saturated softmax: some probabilities underflow to exactly 0
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 4, generator=g) * 5
    y = torch.randint(0, 3, (32,), generator=g)

    def loss_fn(m, batch):
        p = torch.softmax(m(batch[0]), dim=1)
        return -torch.log(p[torch.arange(len(batch[1])), batch[1]]).mean()

    return model, optimizer, loop(model, optimizer, lambda: [(x, y)], loss_fn)


if __name__ == "__main__":
    setup()[2]()
