"""Shape e: the training code calls a submodule, not the model the optimizer trains (``self.body(x)`` inside a
Lightning-style ``training_step``), twice per batch (two augmented views). Samples 12 and 14 hit log(0) in a
hand-written cross-entropy; the names are those of the trained model's ``named_modules()``."""

import torch
from _shapes import BATCH, classification, hand_written_ce, loader
from torch import nn

SATURATING = (12, 14)
EXPECT = {
    "kind": "domain_error",
    "where": "loss",
    "phase": "loss",
    "step": 12 // BATCH,
    "op": "log",
    "samples": list(SATURATING),
}
BAD_STEPS = (12 // BATCH,)


class Task(nn.Module):
    """Owns the network and the loss, like a LightningModule; its own forward is never called."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 3))
        with torch.no_grad():
            self.body[0].weight.copy_(torch.eye(3, 4))
            self.body[0].bias.zero_()

    def training_step(self, batch):
        x, y = batch
        first = self.body(x)
        second = self.body(x * 1.0)  # a second view of the same batch
        return 0.5 * (hand_written_ce(first, y) + hand_written_ce(second, y))


def faulty():
    return classification(saturating=SATURATING)


def setup(dataset=None):
    dataset = dataset or faulty()
    task = Task()
    optimizer = torch.optim.SGD(task.parameters(), lr=0.1)

    def train():
        for batch in loader(dataset):
            loss = task.training_step(batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    return task, optimizer, train


if __name__ == "__main__":
    setup()[2]()
