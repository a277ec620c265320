"""An accelerate loop: Accelerator.prepare (AcceleratedOptimizer, DataLoaderShard reading one batch ahead),
accumulate() with 2 micro-batches per step, accelerator.clip_grad_norm_. Sample 42 holds a NaN."""

import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

DIRTY = 42
SEED = 1
ACCUMULATE = 2


def main():
    g = torch.Generator().manual_seed(0)
    x = 0.1 * torch.randn(96, 4, generator=g)
    y = torch.randint(0, 3, (96,), generator=g)
    x[DIRTY, 1] = float("nan")
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=ACCUMULATE)
    model = nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    loader = DataLoader(
        TensorDataset(x, y), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(SEED)
    )
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    for xb, yb in loader:
        with accelerator.accumulate(model):
            accelerator.backward(nn.functional.cross_entropy(model(xb), yb))
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad()


if __name__ == "__main__":
    main()
