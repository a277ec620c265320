"""Seeds 001-003: a deep ReLU MLP without normalization, trained with too high a learning rate on unscaled
targets; the gradients grow step after step until the forward pass overflows."""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from _common import loop, mse

# the rows that overflow first depend on the shuffled batch; the zoo checks they are real rows ("any")
EXPECT = {
    "kind": "gradient_explosion",
    "where": "loss",
    "phase": "forward",
    "step": "oracle",
    "op": "addmm",
    "module": "12",
    "samples": "any",
}
EXPECT_WARN = {"kind": "undetermined", "op": None, "module": None, "samples": None}


def setup():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 16, generator=g)
    y = 50.0 * torch.randn(128, 1, generator=g)  # unscaled targets
    torch.manual_seed(0)
    layers = []
    for _ in range(6):
        layers += [nn.Linear(16, 16), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(16, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    loader = DataLoader(
        TensorDataset(x, y), batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0)
    )

    train = loop(model, optimizer, lambda: loader, mse, epochs=200)
    return model, optimizer, train


if __name__ == "__main__":
    setup()[2]()
