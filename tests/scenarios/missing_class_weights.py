"""Seed 003 section 3: the loss is normalized by each label's frequency in the batch; a batch without
label 2 divides 0 by 0. A property of the whole batch, not of any sample."""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

BATCH = 8
EXPECT = {
    "kind": "domain_error",
    "where": "loss",
    "phase": "loss",
    "step": 1,
    "op": "div",
    "module": None,
    "samples": None,
}
EXPECT_WARN = {"kind": "undetermined", "op": None, "module": None}


def setup():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 5, generator=g)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1] + [0, 1, 0, 1, 0, 1, 0, 1] + [2, 1, 0, 2, 1, 0, 2, 1] * 2)
    torch.manual_seed(0)
    model = nn.Linear(5, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH)

    def train():
        for xb, yb in loader:
            per_sample = nn.functional.cross_entropy(model(xb), yb, reduction="none")
            onehot = nn.functional.one_hot(yb, 3).float()
            per_class = per_sample @ onehot  # summed loss of each class
            freq = onehot.sum(0)  # 0 for a class missing from the batch
            loss = (per_class / freq).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    return model, optimizer, train


if __name__ == "__main__":
    setup()[2]()
