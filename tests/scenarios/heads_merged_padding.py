"""Issue 13: multi-head attention that merges the batch with the heads ([B * H, T, T] scores) and masks padded
keys with -inf. One sequence arrives empty (length 0): every key of its rows is masked, softmax over an all
-inf row is 0/0 = NaN. The op's output rows are (sample, head) pairs, not samples, so the rows alone cannot
name it: re-runs on parts of the batch do (the sample alone fails, the batch without it is finite)."""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from _common import loop

EMPTY = (13,)
BATCH, T, HEADS, DIM = 8, 6, 4, 16
EXPECT = {
    "kind": "domain_error",
    "where": "loss",
    "phase": "forward",
    "step": 13 // BATCH,
    "op": "_softmax",
    "module": "attn",
    "samples": list(EMPTY),
}
EXPECT_WARN = {"kind": "undetermined", "op": None, "module": None, "samples": None}


class HeadsAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(DIM, 3 * DIM)

    def forward(self, h, lengths):
        b = h.shape[0]
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        split = lambda t: t.reshape(b, T, HEADS, DIM // HEADS).transpose(1, 2).reshape(b * HEADS, T, -1)
        q, k, v = split(q), split(k), split(v)
        padded = torch.arange(T)[None, :] >= lengths[:, None]  # [B, T] keys past the length
        mask = padded.repeat_interleave(HEADS, dim=0)[:, None, :]  # [B * H, 1, T]
        scores = (q @ k.transpose(1, 2) / 2.0).masked_fill(mask, float("-inf"))
        out = torch.softmax(scores, dim=-1) @ v  # [B * H, T, D / H]
        return out.reshape(b, HEADS, T, -1).transpose(1, 2).reshape(b, T, DIM)


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.attn = HeadsAttention()
        self.head = nn.Linear(DIM, 1)

    def forward(self, x, lengths):
        return self.head(self.attn(x, lengths).mean(1))


def setup():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, T, DIM, generator=g)
    lengths = torch.randint(2, T + 1, (32,), generator=g)
    lengths[list(EMPTY)] = 0  # an empty recording
    y = torch.randn(32, 1, generator=g)
    model = Encoder()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loader = DataLoader(TensorDataset(x, lengths, y), batch_size=BATCH)

    def loss_fn(m, batch):
        x, lengths, y = batch
        return ((m(x, lengths) - y) ** 2).mean()

    return model, optimizer, loop(model, optimizer, lambda: loader, loss_fn, epochs=1)


if __name__ == "__main__":
    setup()[2]()
