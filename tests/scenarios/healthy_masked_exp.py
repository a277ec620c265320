"""Healthy control (issue 13): legitimate non-finite intermediates. A stable masked softmax (max
subtracted, exp(-inf) = exact zeros), a double-`where` guarded log (the safe form), and large but finite
activations. Nothing here may be reported."""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from _common import loop

EXPECT = {"verdict": "healthy"}


class MaskedPool(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.score = nn.Linear(4, 1)
        self.head = nn.Linear(4, 3)

    def forward(self, x, lengths):
        t = torch.arange(x.shape[1])
        padded = t[None, :] >= lengths[:, None]
        s = self.score(x).squeeze(-1).masked_fill(padded, float("-inf"))
        w = torch.exp(s - s.amax(1, keepdim=True))  # exact zeros at padded positions
        w = w / w.sum(1, keepdim=True)
        return self.head((w[..., None] * x).sum(1))


def loss_fn(model, batch):
    x, lengths, y = batch
    p = torch.softmax(model(x, lengths), dim=1)
    safe = torch.where(p > 0, p, torch.ones_like(p))
    entropy = -(p * torch.where(p > 0, torch.log(safe), torch.zeros_like(p))).sum(1).mean()
    return nn.functional.nll_loss(torch.log(p.clamp_min(1e-12)), y) - 0.01 * entropy


def setup():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 6, 4, generator=g)
    x[7] *= 1e4  # large but finite
    lengths = torch.randint(1, 7, (32,), generator=g)
    y = torch.randint(0, 3, (32,), generator=g)
    model = MaskedPool()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
    loader = DataLoader(TensorDataset(x, lengths, y), batch_size=8)
    return model, optimizer, loop(model, optimizer, lambda: loader, loss_fn, epochs=2)


if __name__ == "__main__":
    setup()[2]()
