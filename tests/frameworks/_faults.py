"""One task and its faults, shared by the Lightning, HF Trainer and accelerate jobs so that every framework is
judged against the same expected report.

The task: 96 samples of 4 features, soft targets over 3 classes (as in distillation or label smoothing), a net
whose logits get a per-row standard deviation branch, and a hand-written cross-entropy ``-(t * log softmax)``.
The data is shuffled with seed 1 in batches of 8. Each fault touches known dataset indices:

- ``dirty``: a NaN feature in sample 42 (the seeds' dirty input);
- ``nan_label``: sample 42's target is NaN;
- ``log_zero``: samples 17 and 20 saturate the softmax, so the loss takes log(0) for their target class;
- ``sqrt``: sample 29 is all zeros, so the std branch takes sqrt of a variance of exactly 0: sqrt'(0) = inf in
  backward while the forward stays finite;
- ``lr``: the learning-rate schedule multiplies the rate by 1e9 from step 4 (a schedule bug).
"""

from __future__ import annotations

import json
import sys

import torch
from torch import nn

N, FEATURES, CLASSES, BATCH, SEED = 96, 4, 3, 8, 1
FAULTS = ("none", "dirty", "nan_label", "log_zero", "sqrt", "lr")
BAD = {"none": (), "dirty": (42,), "nan_label": (42,), "log_zero": (17, 20), "sqrt": (29,), "lr": ()}
LR_JUMP_STEP = 4


def data(fault: str = "none") -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = 0.5 * torch.randn(N, FEATURES, generator=g)
    y = torch.randint(0, CLASSES, (N,), generator=g)
    t = torch.full((N, CLASSES), 0.05)
    t[torch.arange(N), y] = 0.9
    if fault == "dirty":
        x[42, 1] = float("nan")
    elif fault == "nan_label":
        t[42] = float("nan")
    elif fault == "log_zero":
        x[[17, 20]] = torch.tensor([-200.0, 200.0, 0.0, 0.0])
    elif fault == "sqrt":
        x[29] = 0.0
    return x, t


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.scale = nn.Linear(FEATURES, 4, bias=False)
        self.head = nn.Linear(FEATURES, CLASSES)
        with torch.no_grad():
            self.head.weight.copy_(torch.eye(CLASSES, FEATURES))
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.scale(x)
        std = ((h - h.mean(dim=1, keepdim=True)) ** 2).mean(dim=1, keepdim=True).sqrt()
        return self.head(x) + std


def soft_cross_entropy(logits: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return -(t * torch.log(torch.softmax(logits, dim=1))).sum(dim=1).mean()


def lr_factor(fault: str):
    def factor(step: int) -> float:
        return 1e9 if fault == "lr" and step >= LR_JUMP_STEP else 1.0

    return factor


def option(name: str, default: str | None = None) -> str | None:
    """``--name value`` from the job's argv (the jobs are run as scripts; no argparse needed for a test)."""
    argv = sys.argv[1:]
    return argv[argv.index(name) + 1] if name in argv else default


def flag(name: str) -> bool:
    return name in sys.argv[1:]


def finish(model: nn.Module) -> None:
    """With ``--out PATH``: the final weights (for bitwise comparisons) and the loss on clean data."""
    out = option("--out")
    if out is None:
        return
    x, t = data("none")
    with torch.no_grad():
        loss = float(soft_cross_entropy(model(x), t))
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, out + ".pt")
    with open(out, "w") as f:
        json.dump({"clean_loss": loss}, f)
