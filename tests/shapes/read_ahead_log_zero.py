"""Shape b with a replay: the loop reads ahead, so the failing batch comes round again only after the one
already fetched; the replay must trace the failing batch, not the next one. Samples 33 and 38 hit log(0)."""

import torch
from _shapes import BATCH, classification, hand_written_ce, linear, loader
from read_ahead_dirty import one_ahead

SATURATING = (33, 38)
EXPECT = {
    "kind": "domain_error",
    "where": "loss",
    "phase": "loss",
    "step": 33 // BATCH,
    "op": "log",
    "samples": list(SATURATING),
}
BAD_STEPS = (33 // BATCH,)
# what skip discards: batch 4 (the failing one) and batch 5, fetched ahead and consumed while the replayed
# batch 4 waits for its turn in the loader's order (the replay itself is discarded as well)
LOST_BATCHES = (4, 5)


def faulty():
    return classification(saturating=SATURATING)


def setup(dataset=None):
    dataset = dataset or faulty()
    model = linear()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    def train():
        for x, y in one_ahead(loader(dataset, shuffle=False)):
            loss = hand_written_ce(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    return model, optimizer, train


if __name__ == "__main__":
    setup()[2]()
