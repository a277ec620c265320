"""Shape g: dynamic loss scaling (torch.amp.GradScaler). The first steps' scaled gradients overflow by design
(init_scale 3.3e38: the scaled loss is inf): the scaler skips them and backs off, which is not a failure. Then sample 70 holds a NaN:
a genuine NaN in the loss, which is one."""

import torch
from _shapes import classification, linear, loader
from torch import nn

DIRTY = (70,)
EXPECT = {"kind": "nonfinite_input", "where": "inputs", "phase": "data", "step": "scaler", "samples": [70]}


def faulty():
    return classification(dirty=DIRTY)


def setup(dataset=None):
    dataset = dataset or faulty()
    model = linear()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=3.3e38, growth_interval=1000)
    loss_fn = nn.CrossEntropyLoss(reduction="sum")  # about 9: times the initial scale it overflows

    def train():
        for x, y in loader(dataset):
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

    return model, optimizer, train


if __name__ == "__main__":
    setup()[2]()
