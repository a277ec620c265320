"""A plain PyTorch training script with one planted problem (``--plant CODE``) or none, for ``nanscope check``.

Run it with ``python`` to see what the problem does to plain training (it prints the final loss as JSON);
run it under ``nanscope check`` to see it found. ``--out FILE`` is written after training (the check must stop
the script before). Data are learnable: class = argmax of a fixed linear map of the inputs.
"""

import argparse
import json
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

p = argparse.ArgumentParser()
p.add_argument("--kind", default="mlp", choices=["mlp", "cnn", "lstm", "transformer", "regression", "binary"])
p.add_argument("--plant", default="")
p.add_argument("--epochs", type=int, default=3)
p.add_argument("--out")
args = p.parse_args()
plant = args.plant
torch.manual_seed(0)
C, N = 4, 512


class Data(Dataset):
    def __init__(self):
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(N, 16, generator=g)
        self.y = (self.x @ torch.randn(16, C, generator=g)).argmax(1)
        self.t = self.x @ torch.randn(16, generator=g) * 0.5  # a regression target, both signs
        if plant == "nonfinite_samples":
            self.x[[5, 17, 300]] = float("nan")
        if plant == "label_out_of_range":
            self.y[[9, 40]] = C
        if plant == "unnormalized_inputs":
            self.x = self.x * 1000 + 500

    def __len__(self):
        return N

    def __getitem__(self, i):
        x = self.x[i]
        if args.kind == "cnn":
            x = x.reshape(1, 4, 4)
        elif args.kind == "lstm":
            x = x.reshape(4, 4)
        elif args.kind == "transformer":
            x = ((x * 3).round().clamp(-12, 12) + 12).long()  # tokens 0..24
        if args.kind == "regression":
            return x, self.t[i : i + 1]
        if args.kind == "binary":
            return x, (self.y[i] % 2).float().reshape(1)
        return x, self.y[i]


class Lstm(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn, self.head = nn.LSTM(4, 32, batch_first=True), nn.Linear(32, C)

    def forward(self, x):
        return self.head(self.rnn(x)[0][:, -1])


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(25, 32)
        layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.1, batch_first=True)
        self.enc, self.head = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False), nn.Linear(32, C)

    def forward(self, x):
        return self.head(self.enc(self.emb(x)).mean(1))


def mlp(width=64, act=nn.ReLU, depth=1, out=C):
    layers, d = [], 16
    for _ in range(depth):
        layers += [nn.Linear(d, width), act()]
        d = width
    return nn.Sequential(*layers, nn.Linear(d, out))


if args.kind == "mlp":
    depth, act = (12, nn.Sigmoid) if plant == "vanishing_gradients" else (1, nn.ReLU)
    act = nn.Tanh if plant == "saturated_activations" else act
    depth = 10 if plant == "init_scale" else depth
    model = mlp(act=act, depth=depth)
elif args.kind == "cnn":
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, C),
    )  # fmt: skip
elif args.kind == "lstm":
    model = Lstm()
elif args.kind == "transformer":
    model = Tiny()
elif args.kind == "regression":
    model = mlp(act=nn.Tanh, out=1)
else:
    model = mlp(width=32, out=1)

with torch.no_grad():
    if plant == "dead_relu":
        model[0].bias.fill_(-8.0)  # every pre-activation negative: the ReLU units never fire
    if plant == "saturated_activations":
        model[0].weight.mul_(30)
    if plant == "init_scale":
        for m in model:
            if isinstance(m, nn.Linear):
                m.weight.mul_(6)  # 6/sqrt(6) per layer with the ReLU: the signal grows ~10^4 over ten layers
    if plant == "initial_loss":
        model[-1].weight.mul_(200)
if plant == "double_softmax":
    model = nn.Sequential(model, nn.Softmax(dim=-1))
if plant in ("sigmoid_bce", "output_activation_mismatch"):
    model = nn.Sequential(model, nn.Sigmoid() if plant == "sigmoid_bce" else nn.ReLU())

if args.kind == "cnn":
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
elif args.kind == "regression":
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
elif plant == "exploding_gradients":
    opt = torch.optim.SGD(model.parameters(), lr=200.0)
else:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, eps=0.0 if plant == "eps_zero" else 1e-8)
loader = DataLoader(Data(), batch_size=32, shuffle=True)
sched = None
if args.kind == "lstm":
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=args.epochs * len(loader))
if plant == "lr_schedule_nonfinite":  # a warm-up written as 1 / (1 - step / 50)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 / (1 - s / 50) if s != 50 else math.inf)


def criterion(out, y):
    if plant == "log_of_softmax":
        return -torch.log(torch.softmax(out, -1)).gather(1, y[:, None]).mean()
    if plant == "sigmoid_bce":
        return F.binary_cross_entropy(out, y)
    if args.kind == "binary":
        return F.binary_cross_entropy_with_logits(out, y)
    if args.kind == "regression" or plant == "output_activation_mismatch":
        if plant == "cannot_overfit_batch":
            return F.mse_loss(out, y.reshape(-1))  # (N, 1) against (N,): broadcast to (N, N)
        return F.mse_loss(out, y)
    return F.cross_entropy(out, y)


losses = []
for _epoch in range(args.epochs):
    for x, y in loader:
        loss = criterion(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(loss.item())
if args.out:
    with open(args.out, "w") as f:
        f.write("trained\n")
print(
    json.dumps(
        {"first": losses[0], "last": sum(losses[-10:]) / 10, "finite": all(map(math.isfinite, losses))}
    )
)
