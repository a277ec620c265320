"""Issue 13: a LayerNorm over activations that are huge but finite (an unscaled residual stream fed raw
values near 1e20): its variance overflows float32 and the normalization makes inf/inf = NaN. That is an
overflow of statistics of values already out of range, not a 0/0 domain error."""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from _common import loop

LOUD = (11,)
BATCH = 4
EXPECT = {
    "kind": "overflow",
    "where": "loss",
    "phase": "forward",
    "step": 11 // BATCH,
    "op": "native_layer_norm",
    "module": "norm",
    "samples": list(LOUD),
}
EXPECT_WARN = {"kind": "undetermined", "op": None, "module": None, "samples": None}


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Linear(16, 16)
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 1)

    def forward(self, x):
        return self.head(self.norm(x + self.proj(x)))


def setup():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 16, generator=g)
    x[list(LOUD)] *= 1e20  # finite, but its squares are not
    y = torch.randn(32, 1, generator=g)
    model = Block()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH)
    return (
        model,
        optimizer,
        loop(model, optimizer, lambda: loader, lambda m, b: ((m(b[0]) - b[1]) ** 2).mean(), epochs=1),
    )


if __name__ == "__main__":
    setup()[2]()
