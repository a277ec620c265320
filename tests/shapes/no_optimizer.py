"""Shape f: no torch.optim optimizer (pytorch/examples' word_language_model updates p.data by hand). Sample 50
holds a NaN; with no optimizer the step index counts backward calls, so the batch of step 50 // 8 = 6."""

import torch
from _shapes import BATCH, classification, linear, loader
from torch import nn

DIRTY = (50,)
LR = 0.1
EXPECT = {"kind": "nonfinite_input", "where": "inputs", "phase": "data", "step": 50 // BATCH, "samples": [50]}
BAD_STEPS = (50 // BATCH,)


def faulty():
    return classification(dirty=DIRTY)


def setup(dataset=None):
    dataset = dataset or faulty()
    model = linear()
    loss_fn = nn.CrossEntropyLoss()

    def train():
        for x, y in loader(dataset):
            model.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(p.grad, alpha=-LR)

    return model, None, train


if __name__ == "__main__":
    setup()[2]()
