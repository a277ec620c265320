"""Issue 13: nn.CTCLoss, called in the loop outside the model, gets one sample whose target is longer than
its input sequence: no alignment exists, the loss is -log(0) = inf. An infeasible alignment (a
`domain_error` of the data), not an overflow; phase `loss`; the sample is named."""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from _common import loop

TOO_LONG = (13,)
BATCH = 8
FRAMES, LABELS = 10, 5
EXPECT = {
    "kind": "domain_error",
    "where": "loss",
    "phase": "loss",
    "step": 13 // BATCH,
    "op": "_ctc_loss",
    "module": None,
    "samples": list(TOO_LONG),
}
EXPECT_WARN = {"kind": "undetermined", "op": None, "samples": None}


class Acoustic(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.rnn = nn.GRU(6, 16, batch_first=True)
        self.out = nn.Linear(16, LABELS + 1)

    def forward(self, x):
        return self.out(self.rnn(x)[0]).log_softmax(-1)


ctc = nn.CTCLoss(blank=0)


def ctc_step(model, batch):
    x, targets, target_lengths = batch
    log_probs = model(x).transpose(0, 1)  # (T, N, C)
    input_lengths = torch.full((x.shape[0],), FRAMES, dtype=torch.long)
    return ctc(log_probs, targets, input_lengths, target_lengths)


def setup():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, FRAMES, 6, generator=g)
    targets = torch.randint(1, LABELS + 1, (32, 14), generator=g)
    lengths = torch.randint(2, 5, (32,), generator=g)
    lengths[list(TOO_LONG)] = 14  # 14 labels cannot align to 10 frames
    model = Acoustic()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loader = DataLoader(TensorDataset(x, targets, lengths), batch_size=BATCH)
    return model, optimizer, loop(model, optimizer, lambda: loader, ctc_step, epochs=1)


if __name__ == "__main__":
    setup()[2]()
