"""Seed 003 section 6: a hand-written softmax, exp(x) / sum(exp(x)), overflows on large activations."""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from _common import loop

LOUD = (9,)
BATCH = 4
EXPECT = {
    "kind": "overflow",
    "where": "loss",
    "phase": "forward",
    "step": 9 // BATCH,
    "op": "exp",
    "module": "softmax",
    "samples": list(LOUD),
}
EXPECT_WARN = {"kind": "undetermined", "op": None, "module": None, "samples": None}


class NaiveSoftmax(nn.Module):
    def forward(self, z):
        e = torch.exp(z)  # no max subtraction
        return e / e.sum(-1, keepdim=True)


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Linear(8, 5)
        self.softmax = NaiveSoftmax()

    def forward(self, x):
        return self.softmax(self.body(x))


def nll_of_probabilities(model, batch):
    x, y = batch
    return nn.functional.nll_loss(torch.log(model(x) + 1e-9), y)


def setup():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 8, generator=g)
    x[list(LOUD)] *= 400.0  # an unnormalized sample: logits in the hundreds
    y = torch.randint(0, 5, (32,), generator=g)
    model = Classifier()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH)

    train = loop(model, optimizer, lambda: loader, nll_of_probabilities, epochs=1)
    return model, optimizer, train


if __name__ == "__main__":
    setup()[2]()
