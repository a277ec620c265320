"""Lightning automatic optimization (forward and backward inside optimizer.step(closure)), gradient_clip_val,
a shuffled DataLoader, and the network called as self.body(x) in training_step. Sample 42 holds a NaN."""

import sys

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

DIRTY = 42
SEED = 1


class Task(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.body(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def main():
    g = torch.Generator().manual_seed(0)
    x = 0.1 * torch.randn(96, 4, generator=g)
    y = torch.randint(0, 3, (96,), generator=g)
    x[DIRTY, 1] = float("nan")
    loader = DataLoader(
        TensorDataset(x, y), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(SEED)
    )
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        gradient_clip_val=float(sys.argv[1]) if len(sys.argv) > 1 else None,
    )
    trainer.fit(Task(), loader)


if __name__ == "__main__":
    main()
