"""Shape a: optimizer.step(closure) (Lightning's automatic optimization, LBFGS): forward, zero_grad and backward
run inside step. Two samples of the batch of step 2 drive a hand-written cross-entropy to log(0)."""

import torch
from _shapes import BATCH, classification, hand_written_ce, linear, loader

SATURATING = (17, 20)
EXPECT = {
    "kind": "domain_error",
    "where": "loss",
    "phase": "loss",
    "step": 17 // BATCH,
    "op": "log",
    "samples": list(SATURATING),
}
BAD_STEPS = (17 // BATCH,)  # the steps whose batch holds a culprit (for the skip oracle)


def faulty():
    return classification(saturating=SATURATING)


def setup(dataset=None):
    dataset = dataset or faulty()
    model = linear()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def train():
        for x, y in loader(dataset):

            def closure(x=x, y=y):
                optimizer.zero_grad()
                loss = hand_written_ce(model(x), y)
                loss.backward()
                return loss

            optimizer.step(closure)

    return model, optimizer, train


if __name__ == "__main__":
    setup()[2]()
