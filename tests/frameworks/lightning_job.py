"""The shared task (``_faults``) under Lightning ``Trainer.fit``.

Options: ``--fault NAME``, ``--accumulate K`` (accumulate_grad_batches), ``--clip V`` (gradient_clip_val),
``--manual`` (manual optimization: manual_backward, clip_gradients, opt.step), ``--precision P`` (e.g.
bf16-mixed), ``--workers N``, ``--checkpoints DIR`` (ModelCheckpoint every step with save_last),
``--min-steps N``, ``--epochs N``, ``--callback`` (the explicit NanscopeCallback instead of zero-code, with
``--policy SPEC`` and ``--report PATH``), ``--resume CKPT``, ``--devices N`` (``strategy="ddp"`` when N > 1), ``--tensorboard`` (a TensorBoardLogger in ``tb/``), ``--out PATH``.
"""

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from _faults import BATCH, SEED, Net, data, finish, flag, lr_factor, option, soft_cross_entropy

FAULT = option("--fault", "none")


class Task(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = Net()
        self.automatic_optimization = not flag("--manual")

    def training_step(self, batch, batch_idx):
        x, t = batch
        loss = soft_cross_entropy(self.net(x), t)
        if self.automatic_optimization:
            return loss
        opt = self.optimizers()
        opt.zero_grad()
        self.manual_backward(loss)
        if option("--clip"):
            self.clip_gradients(
                opt, gradient_clip_val=float(option("--clip")), gradient_clip_algorithm="norm"
            )
        opt.step()
        self.lr_schedulers().step()
        return loss

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(FAULT))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def main():
    x, t = data(FAULT)
    workers = int(option("--workers", "0"))
    loader = DataLoader(
        TensorDataset(x, t),
        batch_size=BATCH,
        shuffle=True,
        generator=torch.Generator().manual_seed(SEED),
        num_workers=workers,
        persistent_workers=workers > 0,
    )
    callbacks = []
    if option("--checkpoints"):
        callbacks.append(
            L.pytorch.callbacks.ModelCheckpoint(
                dirpath=option("--checkpoints"), every_n_train_steps=1, save_last=True, save_top_k=-1
            )
        )
    if flag("--callback"):
        from nanscope.integrations.lightning import NanscopeCallback

        callbacks.append(NanscopeCallback(policy=option("--policy", "stop"), report_path=option("--report")))
    manual = flag("--manual")
    task = Task()
    trainer = L.Trainer(
        max_epochs=int(option("--epochs", "1")),
        min_steps=int(option("--min-steps", "-1")),
        accelerator="cpu",
        devices=int(option("--devices", "1")),
        strategy="ddp" if int(option("--devices", "1")) > 1 else "auto",
        logger=L.pytorch.loggers.TensorBoardLogger(save_dir="tb") if flag("--tensorboard") else False,
        callbacks=callbacks,
        enable_checkpointing=bool(option("--checkpoints")),
        enable_progress_bar=False,
        enable_model_summary=False,
        accumulate_grad_batches=int(option("--accumulate", "1")),
        gradient_clip_val=None if manual or not option("--clip") else float(option("--clip")),
        precision=option("--precision", "32-true"),
    )
    trainer.fit(task, loader, ckpt_path=option("--resume"))
    finish(task.net)


if __name__ == "__main__":
    main()
