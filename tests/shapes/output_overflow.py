"""Shape j: no false witness, and provenance. The model returns finite values of 6e37 for samples 40-45 (an exp
output link on a large input); the squared error overflows to inf in the loss. The model's output was finite
(a float32 sum of those six outputs, 3.6e38, would itself overflow and say the model returned Inf), and what
made the values extreme is the forward's ``exp`` (inputs of at most 87): that is the origin a practitioner
changes; the loss's ``pow`` stays as evidence."""

import torch
from _shapes import BATCH, classification, loader
from torch import nn

HUGE = (40, 41, 42, 43, 44, 45)
EXPECT = {
    "kind": "overflow",
    "where": "loss",
    "phase": "forward",
    "step": 40 // BATCH,
    "op": "exp",
    "samples": list(HUGE),
}
# no replay under warn: the output check says the model's output was finite, so the phase is the loss
EXPECT_WARN = {"kind": "undetermined", "op": None, "samples": None, "phase": "loss"}


class ExpLink(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 1)
        with torch.no_grad():
            self.fc.weight.fill_(1.0)
            self.fc.bias.zero_()

    def forward(self, x):
        return torch.exp(self.fc(x))


def faulty():
    dataset = classification()
    for i in HUGE:
        dataset.tensors[0][i] = torch.full((4,), 21.75)  # exp(87) = 6.1e37: finite in float32
    return dataset


def setup(dataset=None):
    dataset = dataset or faulty()
    model = ExpLink()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-6)

    def train():
        for x, y in loader(dataset):
            target = y.float().unsqueeze(1)
            loss = ((model(x) - target) ** 2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    return model, optimizer, train


if __name__ == "__main__":
    setup()[2]()
