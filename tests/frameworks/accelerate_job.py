"""The shared task (``_faults``) in an accelerate loop: ``Accelerator.prepare`` (AcceleratedOptimizer,
DataLoaderShard reading one batch ahead), ``accumulate()``, ``accelerator.clip_grad_norm_``, a LambdaLR
stepped per batch. Options: ``--fault NAME``, ``--accumulate K``, ``--epochs N``, ``--out PATH``."""

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader, TensorDataset

from _faults import BATCH, SEED, Net, data, finish, lr_factor, option, soft_cross_entropy

FAULT = option("--fault", "none")


def main():
    x, t = data(FAULT)
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=int(option("--accumulate", "1")))
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(FAULT))
    loader = DataLoader(
        TensorDataset(x, t), batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(SEED)
    )
    model, optimizer, loader, schedule = accelerator.prepare(model, optimizer, loader, schedule)
    for _ in range(int(option("--epochs", "1"))):
        for xb, tb in loader:
            with accelerator.accumulate(model):
                accelerator.backward(soft_cross_entropy(model(xb), tb))
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad()
    finish(accelerator.unwrap_model(model))


if __name__ == "__main__":
    main()
