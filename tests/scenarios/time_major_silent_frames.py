"""Issue 13: a time-major speech model ([T, B, F] inputs, frames flattened to [T * B, F]) normalizes each
frame by its norm. One recording is silent (all zeros): its frames divide 0 by 0. The op's rows are
(time, sample) pairs: re-runs on parts of the batch name the recording."""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from _common import loop

SILENT = (22,)
BATCH, T, F = 8, 5, 6
EXPECT = {
    "kind": "domain_error",
    "where": "loss",
    "phase": "forward",
    "step": 22 // BATCH,
    "op": "div",
    "module": "frames",
    "samples": list(SILENT),
}
EXPECT_WARN = {"kind": "undetermined", "op": None, "module": None, "samples": None}


class FrameNorm(nn.Module):
    def forward(self, x):  # x: [T, B, F] (time-major)
        t, b, f = x.shape
        frames = x.reshape(t * b, f)
        frames = frames / frames.norm(dim=1, keepdim=True)  # no eps
        return frames.reshape(t, b, f)


class Recognizer(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.frames = FrameNorm()
        self.rnn = nn.GRU(F, 8)
        self.out = nn.Linear(8, 3)

    def forward(self, x):  # x: [B, T, F] from the loader
        h, _ = self.rnn(self.frames(x.transpose(0, 1)))
        return self.out(h[-1])


def setup():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, T, F, generator=g)
    x[list(SILENT)] = 0.0
    y = torch.randint(0, 3, (32,), generator=g)
    model = Recognizer()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH)
    loss = lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1])
    return model, optimizer, loop(model, optimizer, lambda: loader, loss, epochs=1)


if __name__ == "__main__":
    setup()[2]()
