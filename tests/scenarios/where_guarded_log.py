"""Issue 13: the classic `torch.where(p > 0, torch.log(p), 0)` guard. Forward is finite (where picks 0 where
log made -inf), but backward multiplies where's zero gradient by log'(0) = inf: 0 * inf = NaN. The origin
is the forward log(0) that was selected away, a `domain_error`; not a singular gradient."""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from _common import loop

EMPTY = (4,)
BATCH = 8
EXPECT = {
    "kind": "domain_error",
    "where": "gradients",
    "phase": "loss",
    "step": 4 // BATCH,
    "op": "log",
    "module": None,
    "samples": list(EMPTY),
}
EXPECT_WARN = {
    "kind": "undetermined",
    "op": None,
    "samples": None,
    "phase": "backward",
}  # no replay under warn


def entropy_regularized(model, batch):
    x, y = batch
    logits = model(x)
    p = torch.softmax(logits, dim=1)  # exactly 0 where a logit is far below the others
    entropy = -(p * torch.where(p > 0, torch.log(p), torch.zeros_like(p))).sum(1).mean()
    return nn.functional.cross_entropy(logits, y) - 0.01 * entropy


def setup():
    g = torch.Generator().manual_seed(0)
    x = 0.1 * torch.randn(32, 4, generator=g)
    x[list(EMPTY)] = torch.tensor([0.0, 200.0, -200.0, 0.0])  # logits [0, 200, -200]: p(class 2) = 0
    y = torch.randint(0, 3, (32,), generator=g)
    y[list(EMPTY)] = 1  # the right class: the loss is finite
    model = nn.Linear(4, 3)
    with torch.no_grad():
        model.weight.copy_(torch.eye(3, 4))
        model.bias.zero_()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH)
    return model, optimizer, loop(model, optimizer, lambda: loader, entropy_regularized, epochs=1)


if __name__ == "__main__":
    setup()[2]()
