"""Seeds 000-003: the learning rate is too high for the data's scale; every step overshoots more, the loss and
gradients grow geometrically, and after a few dozen steps the squared error overflows float32."""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from _common import loop, mse

EXPECT = {"kind": "gradient_explosion", "where": "loss", "phase": "loss", "step": "oracle", "op": "mse_loss"}
EXPECT_WARN = {"kind": "undetermined", "op": None}


def setup():
    g = torch.Generator().manual_seed(0)
    x = 3.0 * torch.randn(64, 8, generator=g)  # unnormalized inputs: curvature ~ 9 x 8
    y = x @ torch.randn(8, 1, generator=g)
    torch.manual_seed(0)
    model = nn.Linear(8, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)  # stable only below ~0.03 here
    loader = DataLoader(TensorDataset(x, y), batch_size=16)

    train = loop(model, optimizer, lambda: loader, mse, epochs=100)
    return model, optimizer, train


if __name__ == "__main__":
    setup()[2]()
