"""Shape d: the script clips (clip_grad_norm_ at 0.1, as HF Trainer and nanoGPT do) before step. One branch
takes sqrt of a per-row variance that is exactly 0 for sample 29: sqrt'(0) = inf makes only that branch's
gradients non-finite — before the clip, which would spread the NaN to every parameter."""

import torch
from _shapes import BATCH, classification, loader
from torch import nn

CONSTANT = (29,)
MAX_NORM = 0.1
EXPECT = {
    "kind": "singular_gradient",
    "where": "gradients",
    "phase": "backward",
    "step": 29 // BATCH,
    "op": "sqrt",
    "module": None,
    "samples": [29],
    "names": ["scale.weight"],
}
BAD_STEPS = (29 // BATCH,)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.scale = nn.Linear(4, 4, bias=False)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        h = self.scale(x)
        std = ((h - h.mean(dim=1, keepdim=True)) ** 2).mean(dim=1, keepdim=True).sqrt()
        return self.head(x) + std


def faulty():
    dataset = classification()
    for i in CONSTANT:
        dataset.tensors[0][i] = 0.0  # scale(x) = 0: every entry equal, variance exactly 0
    return dataset


def setup(dataset=None):
    dataset = dataset or faulty()
    model = Net()
    with torch.no_grad():
        model.scale.weight.copy_(torch.randn(4, 4) * 0.5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    loss_fn = nn.CrossEntropyLoss()

    def train():
        for x, y in loader(dataset):
            loss = loss_fn(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_NORM)
            optimizer.step()

    return model, optimizer, train


if __name__ == "__main__":
    setup()[2]()
