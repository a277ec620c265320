"""Issue 13: `log(softmax(x))` where the softmax underflowed to exact zeros. `log` makes -inf in forward, the
loss picks the target's entries (finite) and stays finite, and backward turns 0 * inf into NaN gradients.
The origin is the forward log(0), a `domain_error`, not a singular gradient."""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from _common import loop

CONFIDENT = (19, 22)
BATCH = 8
EXPECT = {
    "kind": "domain_error",
    "where": "gradients",
    "phase": "loss",
    "step": 19 // BATCH,
    "op": "log",
    "module": None,
    "samples": list(CONFIDENT),
}
EXPECT_WARN = {
    "kind": "undetermined",
    "op": None,
    "samples": None,
    "phase": "backward",
}  # no replay under warn


def log_of_softmax_nll(model, batch):
    x, y = batch
    log_p = torch.log(torch.softmax(model(x), dim=1))  # instead of log_softmax
    return nn.functional.nll_loss(log_p, y)


def setup():
    g = torch.Generator().manual_seed(0)
    x = 0.1 * torch.randn(64, 4, generator=g)
    y = torch.randint(0, 3, (64,), generator=g)
    x[list(CONFIDENT)] = torch.tensor([0.0, 200.0, -200.0, 0.0])  # logits [0, 200, -200]: p(class 2) = 0
    y[list(CONFIDENT)] = 1  # the right class: the loss is finite
    model = nn.Linear(4, 3)
    with torch.no_grad():
        model.weight.copy_(torch.eye(3, 4))
        model.bias.zero_()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH)
    return model, optimizer, loop(model, optimizer, lambda: loader, log_of_softmax_nll, epochs=1)


if __name__ == "__main__":
    setup()[2]()
