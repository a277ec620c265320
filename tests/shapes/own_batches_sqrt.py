"""Shape h: batches from the script's own get_batch (nanoGPT's shape), not a DataLoader. Recording 21 is
constant; the model's std pooling takes sqrt of its zero variance: sqrt'(0) = inf. The batch cannot be handed
out again, so the model alone is re-run under op tracing with the gradient that reached its output. Without
observe_batch there are no dataset indices (the evidence names batch rows); with it, the sample is named."""

import torch
from torch import nn

BATCH = 8
CONSTANT = 21
EXPECT = {
    "kind": "singular_gradient",
    "where": "gradients",
    "phase": "backward",
    "step": CONSTANT // BATCH,
    "op": "sqrt",
    "names": ["proj.weight", "proj.bias"],
}


class StatsPool(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Linear(6, 4)
        self.head = nn.Linear(8, 1)

    def forward(self, x):  # x: (batch, time, 6)
        h = self.proj(x)
        mean = h.mean(1)
        std = ((h - mean.unsqueeze(1)) ** 2).mean(1).sqrt()
        return self.head(torch.cat([mean, std], 1))


def setup(observe=None):
    g = torch.Generator().manual_seed(0)
    data = torch.randn(64, 10, 6, generator=g)
    data[CONSTANT] = 0.0  # a dead recording: proj gives exactly its bias at every time step
    targets = torch.randn(64, 1, generator=g)
    model = StatsPool()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

    def get_batch(step):
        rows = torch.arange(step * BATCH, (step + 1) * BATCH)
        return rows, data[rows], targets[rows]

    def train():
        for step in range(len(data) // BATCH):
            rows, x, y = get_batch(step)
            if observe is not None:
                observe((x, y), rows.tolist())
            loss = nn.functional.mse_loss(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    return model, optimizer, train


if __name__ == "__main__":
    setup()[2]()
