"""The shared task (``_faults``) under the HF ``Trainer``.

The Dataset yields dicts with an extra ``note`` column that the model's forward does not take (the Trainer's
column pruning drops it). Options: ``--fault NAME``, ``--accumulate K`` (gradient_accumulation_steps),
``--max-grad-norm V`` (default 1.0, as HF's), ``--compute-loss`` (the loss in a Trainer subclass's
``compute_loss``, the model returns logits only), ``--collator`` (a custom data collator), ``--workers N``,
``--save-steps N`` (checkpoints every N steps into ``out/``), ``--eval-steps N``, ``--epochs N``,
``--callback`` (``nanscope.integrations.transformers.watch`` instead of zero-code, with ``--policy SPEC`` and
``--report PATH``), ``--resume CHECKPOINT``, ``--tensorboard``
(HF's TensorBoardCallback, logging into ``out/runs``), ``--oracle`` (print the optimizer steps done
when the first bad sample reached training_step, and the bad samples of that batch), ``--out PATH``.
"""

import torch
import transformers
from torch import nn
from transformers import Trainer, TrainingArguments

from _faults import BAD, BATCH, Net, data, finish, flag, lr_factor, option, soft_cross_entropy

FAULT = option("--fault", "none")


class Data(torch.utils.data.Dataset):
    def __init__(self, fault):
        self.x, self.t = data(fault)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.t[i], "note": f"row {i}"}


class Model(nn.Module):
    """HF-style: forward(x, labels) returns a dict with the loss (or, for --compute-loss, logits only)."""

    def __init__(self):
        super().__init__()
        self.net = Net()

    def forward(self, x, labels=None):
        logits = self.net(x)
        if labels is None or flag("--compute-loss"):
            return {"logits": logits}
        return {"loss": soft_cross_entropy(logits, labels), "logits": logits}


class LossTrainer(Trainer):
    def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        loss = soft_cross_entropy(outputs["logits"], labels)
        return (loss, outputs) if return_outputs else loss


def collate(rows):
    return {"x": torch.stack([r["x"] for r in rows]), "labels": torch.stack([r["labels"] for r in rows])}


def main():
    seen = []
    if flag("--oracle"):
        plain = transformers.Trainer.training_step

        x, t = data(FAULT)
        rows = torch.cat([x, t], dim=1).nan_to_num(nan=1e30)

        def training_step(self, model, inputs, *args, **kwargs):
            got = torch.cat([inputs["x"], inputs["labels"]], dim=1).nan_to_num(nan=1e30)
            indices = [int((rows == r).all(dim=1).nonzero()[0]) for r in got]
            hit = sorted(set(indices) & set(BAD[FAULT]))
            if not seen and hit:
                seen.append((self.state.global_step, hit))
            return plain(self, model, inputs, *args, **kwargs)

        transformers.Trainer.training_step = training_step
    save = option("--save-steps")
    evals = option("--eval-steps")
    args = TrainingArguments(
        output_dir="out",
        per_device_train_batch_size=BATCH,
        per_device_eval_batch_size=BATCH,
        num_train_epochs=int(option("--epochs", "1")),
        learning_rate=0.05,
        lr_scheduler_type="constant",
        report_to=["tensorboard"] if flag("--tensorboard") else [],
        save_strategy="steps" if save else "no",
        save_steps=int(save) if save else 500,
        eval_strategy="steps" if evals else "no",
        eval_steps=int(evals) if evals else None,
        use_cpu=True,
        gradient_accumulation_steps=int(option("--accumulate", "1")),
        max_grad_norm=float(option("--max-grad-norm", "1.0")),
        dataloader_num_workers=int(option("--workers", "0")),
        disable_tqdm=True,
        seed=1,
        data_seed=1,
        restore_callback_states_from_checkpoint=True,
    )
    model = Model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(FAULT))
    trainer = (LossTrainer if flag("--compute-loss") else Trainer)(
        model=model,
        args=args,
        train_dataset=Data(FAULT),
        eval_dataset=Data("none") if evals else None,
        data_collator=collate if flag("--collator") else None,
        optimizers=(optimizer, schedule),
    )
    if flag("--callback"):
        from nanscope.integrations.transformers import watch

        watch(trainer, policy=option("--policy", "stop"), report_path=option("--report"))
    trainer.train(resume_from_checkpoint=option("--resume"))
    if seen:
        step, hit = seen[0]
        print(f"oracle step {step} samples {','.join(map(str, hit))}")
    finish(model.net)


if __name__ == "__main__":
    main()
