"""Healthy control: causal self-attention with -inf masks (every row keeps at least one finite entry)."""

import torch
from torch import nn
from _common import loop

EXPECT = {"verdict": "healthy"}


class TinyLM(nn.Module):
    def __init__(self, vocab=32, dim=16):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(vocab, dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, vocab)

    def forward(self, tokens):
        h = self.emb(tokens)
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        t = tokens.shape[1]
        mask = torch.full((t, t), float("-inf")).triu(1)
        att = torch.softmax(q @ k.transpose(1, 2) / 4.0 + mask, dim=-1)
        return self.out(self.norm(h + att @ v))


def setup():
    model = TinyLM()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, 32, (16, 12), generator=g)
    batches = lambda: [data[i : i + 4] for i in range(0, 16, 4)]
    loss = lambda m, b: nn.functional.cross_entropy(m(b[:, :-1]).reshape(-1, 32), b[:, 1:].reshape(-1))
    return model, optimizer, loop(model, optimizer, batches, loss, epochs=3)


if __name__ == "__main__":
    setup()[2]()
