"""Issue 13: a hand-written log-sum-exp pooling over time with -inf at padded positions (legitimate: exp
makes them exact zeros). One loud sequence makes `exp` overflow at real positions; log(inf) = inf and the
loss is inf. The -inf padding must not hide the overflow: the origin is `exp`."""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from _common import loop

LOUD = (9,)
BATCH = 8
EXPECT = {
    "kind": "overflow",
    "where": "loss",
    "phase": "forward",
    "step": 9 // BATCH,
    "op": "exp",
    "module": "pool",
    "samples": list(LOUD),
}
EXPECT_WARN = {"kind": "undetermined", "op": None, "module": None, "samples": None}


class LogSumExpPool(nn.Module):
    def forward(self, h, lengths):
        t = torch.arange(h.shape[1])
        padded = t[None, :, None] >= lengths[:, None, None]
        h = h.masked_fill(padded, float("-inf"))
        return torch.log(torch.exp(h).sum(1))  # no max subtraction


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Linear(4, 8)
        self.pool = LogSumExpPool()
        self.head = nn.Linear(8, 1)

    def forward(self, x, lengths):
        return self.head(self.pool(self.proj(x), lengths))


def setup():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 7, 4, generator=g)
    lengths = torch.randint(3, 8, (32,), generator=g)
    x[list(LOUD)] *= 200.0  # an unnormalized recording
    y = torch.randn(32, 1, generator=g)
    model = Encoder()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loader = DataLoader(TensorDataset(x, lengths, y), batch_size=BATCH)

    def loss_fn(m, batch):
        x, lengths, y = batch
        return ((m(x, lengths) - y) ** 2).mean()

    return model, optimizer, loop(model, optimizer, lambda: loader, loss_fn, epochs=1)


if __name__ == "__main__":
    setup()[2]()
