"""Measure (c): a small transformer language model fed one bad batch (every target padded out).

The loss is the usual hand-written masked mean, ``(token_loss * mask).sum() / mask.sum()``: over a batch with
no real target it is 0/0, its gradients are NaN and plain PyTorch writes them into every weight. Under
``skip`` (or ``rollback``) the step is discarded and the run finishes. The baseline is the same run without
that batch.
"""

import json
import sys

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset

VOCAB, SEQ, BATCH, N, EPOCHS = 32, 24, 16, 1024, 2
BAD = range(30 * BATCH, 31 * BATCH)  # the 31st batch of the first epoch
PAD = -1


class LM(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 64)
        self.pos = nn.Parameter(torch.zeros(SEQ, 64))
        self.block = nn.TransformerEncoderLayer(64, 4, 128, dropout=0.1, batch_first=True)
        self.head = nn.Linear(64, VOCAB)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(SEQ))

    def forward(self, tokens):
        h = self.emb(tokens) + self.pos
        return self.head(self.block(h, src_mask=self.mask, is_causal=True))


def masked_mean_loss(logits, targets):
    mask = (targets != PAD).float()
    per_token = nn.functional.cross_entropy(
        logits.reshape(-1, VOCAB), targets.clamp(min=0).reshape(-1), reduction="none"
    )
    return (per_token * mask.reshape(-1)).sum() / mask.sum()


def data():
    g = torch.Generator().manual_seed(0)
    start = torch.randint(0, VOCAB, (N, 1), generator=g)
    step = torch.randint(1, 4, (N, 1), generator=g)
    tokens = (start + step * torch.arange(SEQ + 1)) % VOCAB  # arithmetic sequences: learnable
    inputs, targets = tokens[:, :-1].clone(), tokens[:, 1:].clone()
    targets[list(BAD)] = PAD  # a batch of pure padding
    return TensorDataset(inputs, targets)


def run(clean=False):
    torch.manual_seed(0)
    dataset = data()
    if clean:
        dataset = Subset(dataset, [i for i in range(N) if i not in BAD])
    model = LM()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=False)
    for _ in range(EPOCHS):
        for x, y in loader:
            loss = masked_mean_loss(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    evaluation = data()
    keep = [i for i in range(N) if i not in BAD]
    with torch.no_grad():
        x, y = evaluation.tensors[0][keep], evaluation.tensors[1][keep]
        final = float(masked_mean_loss(model(x), y))
    return {"loss": final, "finite": bool(torch.isfinite(torch.tensor(final)))}


if __name__ == "__main__":
    print(json.dumps(run(clean="--clean" in sys.argv)))
