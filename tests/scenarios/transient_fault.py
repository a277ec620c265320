"""Issue 13: a transient fault. A layer's output is corrupted once, on the third training forward only (as a
bit flip in a failing GPU's memory would do): the same batch, weights and random state give finite values
when the step runs again. The verdict is `not_reproducible`, not a property of the data or the model."""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from _common import loop, mse, regression_data

FAULTY_CALL = 3  # the training forward whose output is corrupted
BATCH = 16
EXPECT = {
    "kind": "not_reproducible",
    "where": "loss",
    "phase": "forward",
    "step": FAULTY_CALL - 1,
    "op": None,
    "module": None,
    "samples": None,
}
EXPECT_WARN = {"kind": "undetermined"}  # no replay under warn


class FlakyLinear(nn.Linear):
    """nn.Linear whose ``fault_at``-th training forward returns one NaN (0: never)."""

    def __init__(self, *args, fault_at=FAULTY_CALL, **kwargs):
        super().__init__(*args, **kwargs)
        self.fault_at = fault_at
        self.calls = 0

    def forward(self, x):
        out = super().forward(x)
        if self.training and torch.is_grad_enabled():
            self.calls += 1
            if self.calls == self.fault_at:
                out = out.clone()
                out[1, 0] = float("nan")  # a flipped exponent bit
        return out


def setup(fault_at=FAULTY_CALL):
    x, y = regression_data()
    torch.manual_seed(0)
    model = nn.Sequential(FlakyLinear(8, 16, fault_at=fault_at), nn.Tanh(), nn.Linear(16, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    loader = DataLoader(
        TensorDataset(x, y), batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    return model, optimizer, loop(model, optimizer, lambda: loader, mse, epochs=2)


if __name__ == "__main__":
    setup()[2]()
