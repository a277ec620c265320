"""A realistic small training job that dies of dirty data, as in seed 000 - run it with ``nanscope demo``.

Sensor recordings (synthetic, made on the spot) are classified by their dominant frequency. The dataset
standardizes each recording on the fly, ``(x - mean) / std``; a few recordings come from a dead sensor and
are flat, so their std is 0 and the transform turns them into 0/0 = NaN. Training looks fine until the first
batch that contains one of them: then the loss reads ``nan``. Plain script, no nanscope imports: nanscope
attaches from the outside (``nanscope run -m nanscope.demo.job``).
"""

from __future__ import annotations

import argparse
import math

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset


class Recordings(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """``n`` recordings of ``length`` samples in ``classes`` frequency bands; ``dead`` of them flat."""

    def __init__(
        self, n: int = 4096, length: int = 64, classes: int = 4, dead: int = 6, seed: int = 0
    ) -> None:
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, classes, (n,), generator=g)
        t = torch.arange(length, dtype=torch.float32)
        freq = (1.0 + self.labels.float() * 2.0 + torch.rand(n, generator=g) * 0.5).unsqueeze(1)
        phase = torch.rand(n, 1, generator=g) * 2 * math.pi
        gain = 0.5 + 2 * torch.rand(n, 1, generator=g)
        self.raw = gain * torch.sin(2 * math.pi * freq * t / length + phase) + 0.3 * torch.randn(
            n, length, generator=g
        )
        self.dead = sorted(torch.randperm(n, generator=g)[:dead].tolist())
        self.raw[self.dead] = 0.0  # a disconnected sensor: zeros all along

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.raw[i]
        x = (x - x.mean()) / x.std()  # per-recording standardization: 0/0 on a flat recording
        return x.unsqueeze(0), self.labels[i]


class FrequencyNet(nn.Module):
    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(1, 16, 5, padding=2),
            nn.BatchNorm1d(16),
            nn.ReLU(),
            nn.MaxPool1d(2),
            nn.Conv1d(16, 32, 5, padding=2),
            nn.BatchNorm1d(32),
            nn.ReLU(),
            nn.AdaptiveAvgPool1d(8),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * 8, 64), nn.ReLU(), nn.Linear(64, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--dead", type=int, default=6, help="flat (dirty) recordings in the dataset")
    parser.add_argument("--workers", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    data = Recordings(dead=args.dead)
    loader = DataLoader(data, batch_size=args.batch_size, shuffle=True, num_workers=args.workers)
    model = FrequencyNet()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    loss_fn = nn.CrossEntropyLoss()
    step = 0
    for epoch in range(args.epochs):
        correct = seen = 0
        for x, y in loader:
            logits = model(x)
            loss = loss_fn(logits, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
            if step % 20 == 0:
                print(f"epoch {epoch} step {step:4d}  loss {loss.item():.4f}", flush=True)
            step += 1
        print(f"epoch {epoch}: train accuracy {correct / max(seen, 1):.3f}", flush=True)


if __name__ == "__main__":
    main()
