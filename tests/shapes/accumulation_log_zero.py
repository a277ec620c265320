"""Shape c: gradient accumulation, 4 micro-batches per optimizer step. Sample 53 (micro-batch 6 = the third of
step 1) hits log(0); the step is the optimizer step that contains it and the sample is named."""

import torch
from _shapes import BATCH, classification, hand_written_ce, linear, loader

ACCUMULATE = 4
SATURATING = (53,)
EXPECT = {
    "kind": "domain_error",
    "where": "loss",
    "phase": "loss",
    "step": 53 // BATCH // ACCUMULATE,
    "op": "log",
    "samples": [53],
}
BAD_STEPS = (53 // BATCH // ACCUMULATE,)
# what skip discards: step 1 as the loop ran it, batches 4, 5, 6 and the replay of 6, which took the place of
# the next draw (batch 7 comes one draw later and opens the next step, as in the run without batches 4-6)
LOST_BATCHES = (4, 5, 6)


def faulty():
    return classification(saturating=SATURATING)


def setup(dataset=None):
    dataset = dataset or faulty()
    model = linear()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)

    def train():
        optimizer.zero_grad()
        for i, (x, y) in enumerate(loader(dataset)):
            loss = hand_written_ce(model(x), y) / ACCUMULATE
            loss.backward()
            if (i + 1) % ACCUMULATE == 0:
                optimizer.step()
                optimizer.zero_grad()

    return model, optimizer, train


if __name__ == "__main__":
    setup()[2]()
