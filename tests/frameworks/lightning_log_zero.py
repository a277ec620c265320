"""Lightning automatic optimization with gradient clipping; samples 17 and 20 drive a hand-written
cross-entropy to log(0). The in-loop replay runs inside Lightning's closure."""

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

SATURATING = (17, 20)


class Task(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(4, 3)
        with torch.no_grad():
            self.body.weight.copy_(torch.eye(3, 4))
            self.body.bias.zero_()

    def training_step(self, batch, batch_idx):
        x, y = batch
        p = torch.softmax(self.body(x), dim=1)
        return -torch.log(p[torch.arange(len(y)), y]).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def main():
    g = torch.Generator().manual_seed(0)
    x = 0.1 * torch.randn(96, 4, generator=g)
    y = torch.randint(0, 3, (96,), generator=g)
    x[list(SATURATING)] = torch.tensor([-200.0, 200.0, 0.0, 0.0])
    y[list(SATURATING)] = 0
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        gradient_clip_val=1.0,
    )
    trainer.fit(Task(), DataLoader(TensorDataset(x, y), batch_size=8))


if __name__ == "__main__":
    main()
