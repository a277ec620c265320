"""Attention over padded sequences: one sequence is all padding, so its softmax row is entirely -inf."""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from _common import loop

EMPTY = (13,)
BATCH = 4
EXPECT = {
    "kind": "domain_error",
    "where": "loss",
    "phase": "forward",
    "step": 13 // BATCH,
    "op": "_softmax",
    "module": "pool",
    "samples": list(EMPTY),
}
EXPECT_WARN = {"kind": "undetermined", "op": None, "module": None, "samples": None}


class AttentionPool(nn.Module):
    def __init__(self, dim=8):
        super().__init__()
        self.score = nn.Linear(dim, 1)

    def forward(self, h, pad):
        s = self.score(h).squeeze(-1).masked_fill(pad, float("-inf"))
        w = torch.softmax(s, dim=1)
        return (w.unsqueeze(-1) * h).sum(1)


class Reader(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Linear(3, 8)
        self.pool = AttentionPool()
        self.head = nn.Linear(8, 1)

    def forward(self, x, pad):
        return self.head(self.pool(self.emb(x), pad))


def masked_mse(model, batch):
    x, pad, y = batch
    return nn.functional.mse_loss(model(x, pad), y)


def setup():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 6, 3, generator=g)
    pad = torch.zeros(32, 6, dtype=torch.bool)
    pad[:, 4:] = True  # legitimate padding: every sequence keeps 4 real positions ...
    pad[list(EMPTY)] = True  # ... except an empty one
    y = torch.randn(32, 1, generator=g)
    model = Reader()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loader = DataLoader(TensorDataset(x, pad, y), batch_size=BATCH)

    train = loop(model, optimizer, lambda: loader, masked_mse, epochs=1)
    return model, optimizer, train


if __name__ == "__main__":
    setup()[2]()
