"""Issue 13: a hand-written attention softmax with a causal -inf mask and a sharp temperature. `exp` overflows
at unmasked positions of two loud samples, then `e / e.sum()` makes inf/inf = NaN. The -inf of the mask is
legitimate input to `exp`; it must not hide the overflow (the origin is `exp`, not the division)."""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from _common import loop

LOUD = (2, 5)
BATCH = 8
EXPECT = {
    "kind": "overflow",
    "where": "loss",
    "phase": "forward",
    "step": 0,
    "op": "exp",
    "module": "attn",
    "samples": list(LOUD),
}
EXPECT_WARN = {"kind": "undetermined", "op": None, "module": None, "samples": None}


class SharpAttention(nn.Module):
    def __init__(self, dim=8, temperature=0.05):
        super().__init__()
        self.qk = nn.Linear(dim, 2 * dim)
        self.temperature = temperature

    def forward(self, h):
        q, k = self.qk(h).chunk(2, dim=-1)
        t = h.shape[1]
        causal = torch.ones(t, t, dtype=torch.bool).triu(1)
        scores = (q @ k.transpose(1, 2) / self.temperature).masked_fill(causal, float("-inf"))
        e = torch.exp(scores)  # no max subtraction
        return (e / e.sum(-1, keepdim=True)) @ h


class Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.attn = SharpAttention()
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.attn(x))


def tagging_loss(model, batch):
    x, y = batch
    return nn.functional.cross_entropy(model(x).reshape(-1, 3), y.reshape(-1))


def setup():
    g = torch.Generator().manual_seed(0)
    x = 0.3 * torch.randn(32, 6, 8, generator=g)
    x[list(LOUD)] *= 60.0  # two unnormalized sequences: scores in the thousands
    y = torch.randint(0, 3, (32, 6), generator=g)
    model = Tagger()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH)
    return model, optimizer, loop(model, optimizer, lambda: loader, tagging_loss, epochs=1)


if __name__ == "__main__":
    setup()[2]()
