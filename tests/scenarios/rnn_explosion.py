"""Issue 13: an RNN explosion (seed 001: "RNN training suddenly gives NaN"). A ReLU recurrent network over
long sequences, trained with too high a learning rate and no gradient clipping: the recurrent weights grow
step after step until the hidden state (a product of T recurrent matrices) overflows. The diagnosis names the
growth (`gradient_explosion`), the step where the loss first overflowed, and advises clipping."""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from _common import loop

EXPECT = {
    "kind": "gradient_explosion",
    "where": "loss",
    "phase": "forward",
    "step": "oracle",
    "op": "addmm",
    "module": "rnn",
    "samples": None,  # every sample overflows on the blown-up weights: no sample is to blame
}
EXPECT_WARN = {"kind": "undetermined", "op": None, "module": None, "samples": None}


class Forecaster(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.rnn = nn.RNN(3, 32, nonlinearity="relu", batch_first=True)
        self.out = nn.Linear(32, 1)

    def forward(self, x):
        return self.out(self.rnn(x)[0][:, -1])


def setup():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 60, 3, generator=g)
    y = x[:, -10:, 0].sum(1, keepdim=True)
    model = Forecaster()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02)
    loader = DataLoader(
        TensorDataset(x, y), batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    mse = lambda m, b: nn.functional.mse_loss(m(b[0]), b[1])
    return model, optimizer, loop(model, optimizer, lambda: loader, mse, epochs=30)


if __name__ == "__main__":
    setup()[2]()
