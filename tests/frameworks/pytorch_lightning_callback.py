"""The standalone ``pytorch_lightning`` package with the explicit ``NanscopeCallback`` (sample 42 is dirty;
unshuffled batches of 8, so it is in step 5). Prints what the caught NonFiniteError's report says, and
whether the callback left any hook or patch behind."""

import pytorch_lightning as pl
import torch
import torch.utils.data.dataloader as dl
from torch.nn.modules import module as module_globals
from torch.optim.optimizer import _global_optimizer_post_hooks, _global_optimizer_pre_hooks
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


def _patched():
    return (torch.autograd.backward, torch.optim.Optimizer.__init__, dl._BaseDataLoaderIter.__next__)


def _left_behind(task, optimizer, originals):
    """Hooks or patches the callback left on the model, the optimizer or torch's globals."""
    names = ("backward", "Optimizer.__init__", "_BaseDataLoaderIter.__next__")
    left = [name for name, now, was in zip(names, _patched(), originals, strict=True) if now is not was]
    left += [n or "model" for n, m in task.named_modules() if m._forward_hooks or m._forward_pre_hooks]
    left += ["optimizer hooks"] * bool(
        optimizer._optimizer_step_pre_hooks or optimizer._optimizer_step_post_hooks
    )
    globals_ = (
        _global_optimizer_pre_hooks,
        _global_optimizer_post_hooks,
        module_globals._global_forward_hooks,
    )
    left += ["global hooks"] * any(globals_)
    return left


def main():
    originals = _patched()
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
    task = Task()
    try:
        trainer.fit(task, DataLoader(TensorDataset(x, t), batch_size=BATCH))
    except nanscope.NonFiniteError as exc:
        report = exc.report
        closed = callback.report is not None
        print(
            f"caught {report.cause.kind} {list(report.cause.samples)} step {report.first_nonfinite.step} {closed}"
        )
    print(f"left behind: {_left_behind(task, trainer.optimizers[0], originals)}")


if __name__ == "__main__":
    main()
