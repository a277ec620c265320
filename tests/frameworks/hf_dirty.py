"""HF Trainer with gradient_accumulation_steps=2 (it fetches every micro-batch of a step ahead, and
accelerate's DataLoaderShard reads one batch ahead), default clipping (max_grad_norm=1.0) and its own
RandomSampler. Sample 42 holds a NaN. With --oracle, runs plainly and prints the optimizer steps completed
when the batch holding it reached training_step."""

import sys

import torch
import transformers
from torch import nn
from transformers import Trainer, TrainingArguments

DIRTY = 42


class Data(torch.utils.data.Dataset):
    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.x = 0.1 * torch.randn(96, 4, generator=g)
        self.y = torch.randint(0, 3, (96,), generator=g)
        self.x[DIRTY, 1] = float("nan")

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.y[i]}


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x, labels=None):
        logits = self.fc(x)
        return {"loss": nn.functional.cross_entropy(logits, labels), "logits": logits}


def main():
    seen = []
    if "--oracle" in sys.argv:
        plain = transformers.Trainer.training_step

        def training_step(self, model, inputs, *args, **kwargs):
            if not seen and not torch.isfinite(inputs["x"]).all():
                seen.append(self.state.global_step)
            return plain(self, model, inputs, *args, **kwargs)

        transformers.Trainer.training_step = training_step
    args = TrainingArguments(
        output_dir="out",
        per_device_train_batch_size=8,
        num_train_epochs=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        gradient_accumulation_steps=2,
        disable_tqdm=True,
    )
    Trainer(model=Net(), args=args, train_dataset=Data()).train()
    if seen:
        print(f"oracle step {seen[0]}")


if __name__ == "__main__":
    main()
