"""The standalone ``pytorch_lightning`` package with the explicit ``NanscopeCallback`` (sample 42 is dirty;
unshuffled batches of 8, so it is in step 5). Prints what the caught NonFiniteError's report says."""

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

import nanscope
from _faults import BATCH, Net, data, soft_cross_entropy
from nanscope.integrations.lightning import NanscopeCallback


class Task(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = Net()

    def training_step(self, batch, batch_idx):
        return soft_cross_entropy(self.net(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def main():
    x, t = data("dirty")
    callback = NanscopeCallback()
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
    )
    try:
        trainer.fit(Task(), DataLoader(TensorDataset(x, t), batch_size=BATCH))
    except nanscope.NonFiniteError as exc:
        report = exc.report
        closed = callback.report is not None
        print(
            f"caught {report.cause.kind} {list(report.cause.samples)} step {report.first_nonfinite.step} {closed}"
        )


if __name__ == "__main__":
    main()
