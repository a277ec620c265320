"""Adam with eps=0: embedding rows that never receive a gradient get the update 0/0 = NaN."""

import torch
from torch import nn
from _common import loop


class Bag(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(50, 8)
        self.out = nn.Linear(8, 1)

    def forward(self, tokens):
        return self.out(self.emb(tokens).mean(1))


EXPECT = {
    "kind": "optimizer_update",
    "where": "parameters",
    "phase": "optimizer",
    "step": 0,
    "parameter": "emb.weight",
}


def setup():
    model = Bag()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, eps=0.0)
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 25, (64, 6), generator=g)  # rows 25..49 are never used
    target = torch.randn(64, 1, generator=g)
    batches = lambda: [(tokens[i : i + 16], target[i : i + 16]) for i in range(0, 64, 16)]
    loss = lambda m, b: nn.functional.mse_loss(m(b[0]), b[1])
    return model, optimizer, loop(model, optimizer, batches, loss)


if __name__ == "__main__":
    setup()[2]()
