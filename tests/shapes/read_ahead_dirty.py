"""Shape b: the loop reads one batch ahead of use (accelerate's DataLoaderShard), and a validation loader runs
between training steps. Sample 42 holds a NaN; the batch holding it is consumed at step 42 // 8 = 5. The
model normalizes its input with BatchNorm, whose running statistics the NaN batch corrupts in forward: a
skipped step must put them back."""

import torch
from _shapes import BATCH, classification, linear, loader
from torch import nn

DIRTY = (42,)
EXPECT = {"kind": "nonfinite_input", "where": "inputs", "phase": "data", "step": 42 // BATCH, "samples": [42]}
BAD_STEPS = (42 // BATCH,)


def one_ahead(iterable):
    """Yield batch k only after fetching batch k+1, as accelerate's DataLoaderShard does."""
    it = iter(iterable)
    current = next(it)
    for following in it:
        yield current
        current = following
    yield current


def faulty():
    return classification(dirty=DIRTY)


def setup(dataset=None):
    dataset = dataset or faulty()
    validation = loader(classification())
    model = nn.Sequential(nn.BatchNorm1d(4), linear())
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    loss_fn = nn.CrossEntropyLoss()

    def train():
        for step, (x, y) in enumerate(one_ahead(loader(dataset))):
            loss = loss_fn(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step % 2 == 1:
                model.eval()
                with torch.no_grad():
                    for vx, vy in validation:
                        loss_fn(model(vx), vy)
                        break
                model.train()

    return model, optimizer, train


if __name__ == "__main__":
    setup()[2]()
