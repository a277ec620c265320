"""A labeled set of real training runs for ``nanscope doctor``, each logged the way a known tool logs it.

Every run trains a small model in plain PyTorch under a condition that produces one verdict (label noise
and a tiny training set for overfitting, a learning rate far too small for a plateau, ...), records train and
validation losses, and writes them in one tool's on-disk format (the writers below reproduce those formats:
Lightning's CSVLogger, Keras' CSVLogger and console, the Hugging Face Trainer's trainer_state.json,
TensorBoard event files through torch's SummaryWriter, Caffe's glog lines, JSON Lines, an experiment tracker's
CSV export). Nothing is hand-drawn: the curves are what the training did.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn


@dataclass
class Log:
    axis: str  # "epoch" or "step"
    train: list[tuple[float, float]] = field(default_factory=list)
    val: list[tuple[float, float]] = field(default_factory=list)
    lr: list[tuple[float, float]] = field(default_factory=list)
    onset: float | None = None  # where the problem starts, from what the run did (not from the curves)


def _blobs(n: int, noise: float, seed: int, dim: int = 8, classes: int = 4):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=torch.Generator().manual_seed(99)) * 1.5
    y = torch.randint(0, classes, (n,), generator=g)
    x = centers[y] + torch.randn(n, dim, generator=g)
    flip = torch.rand(n, generator=g) < noise
    y = torch.where(flip, torch.randint(0, classes, (n,), generator=g), y)
    return x, y


def classify_run(
    *,
    n_train: int,
    label_noise: float = 0.0,
    lr: float = 1e-2,
    hidden: int = 32,
    epochs: int = 30,
    batch: int = 32,
    per_step: bool = False,
    outliers: float = 0.0,
    seed: int = 0,
) -> Log:
    torch.manual_seed(seed)
    x, y = _blobs(n_train, label_noise, seed)
    if outliers:
        g = torch.Generator().manual_seed(seed + 7)
        rows = torch.rand(n_train, generator=g) < outliers
        x[rows] *= 200.0  # mis-scaled records (a unit error in the data)
    vx, vy = _blobs(1024, 0.0, seed + 1)
    model = nn.Sequential(
        nn.Linear(8, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 4)
    )
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    log = Log("step" if per_step else "epoch")
    step = 0
    g = torch.Generator().manual_seed(seed + 3)
    for epoch in range(epochs):
        order = torch.randperm(n_train, generator=g)
        losses = []
        for i in range(0, n_train, batch):
            idx = order[i : i + batch]
            if outliers and log.onset is None and bool(rows[idx].any()):
                log.onset = step + 1  # the first step fed a mis-scaled record
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            losses.append(float(loss.detach()))
            if per_step:
                log.train.append((step, losses[-1]))
                log.lr.append((step, lr))
        with torch.no_grad():
            val = float(nn.functional.cross_entropy(model(vx), vy))
        if per_step:
            log.val.append((step, val))
        else:
            log.train.append((epoch, sum(losses) / len(losses)))
            log.val.append((epoch, val))
            log.lr.append((epoch, lr))
    if log.onset is None and label_noise and n_train < 256:  # overfitting: from the best validation loss
        log.onset = min(log.val, key=lambda p: p[1])[0]
    elif log.onset is None and (lr < 1e-4 or label_noise >= 0.7):  # plateau, data problem: from the start
        log.onset = log.train[0][0]
    return log


def regression_run(*, factor: float, steps: int, poly_max_iter: int | None = None, seed: int = 0) -> Log:
    """Full-batch gradient descent on least squares at ``factor`` times the stability limit of the rate.

    ``poly_max_iter``: Caffe's ``poly`` policy, lr = base * (1 - iter / max_iter) ** 0.9, written without a
    guard for iter > max_iter (seed 003): a negative number to a fractional power is NaN in Caffe's C++.
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(512, 16, generator=g) * torch.linspace(0.3, 2.0, 16)
    w = torch.randn(16, 1, generator=g)
    y = x @ w + 0.1 * torch.randn(512, 1, generator=g)
    vx = torch.randn(256, 16, generator=g) * torch.linspace(0.3, 2.0, 16)
    vy = vx @ w + 0.1 * torch.randn(256, 1, generator=g)
    base = factor * float(2 / torch.linalg.eigvalsh(2 * x.T @ x / len(x)).max())
    torch.manual_seed(seed)
    model = nn.Linear(16, 1)
    opt = torch.optim.SGD(model.parameters(), lr=base)
    log = Log("step")
    for step in range(1, steps + 1):
        if poly_max_iter is not None:
            left = 1 - step / poly_max_iter
            lr = base * left**0.9 if left >= 0 else math.nan
            for group in opt.param_groups:
                group["lr"] = lr
        loss = nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        log.train.append((step, float(loss.detach())))
        log.lr.append((step, opt.param_groups[0]["lr"]))
        if step % 10 == 0:
            with torch.no_grad():
                log.val.append((step, float(nn.functional.mse_loss(model(vx), vy))))
    bad = first_bad(log)
    # non-finite: the first NaN/Inf; otherwise a divergence starts where the loss was lowest
    log.onset = bad if bad is not None else min(log.train, key=lambda p: p[1])[0]
    return log


# ---------------------------------------------------------------- writers, one per tool
def write_lightning(log: Log, root: Path) -> Path:
    folder = root / "lightning_logs" / "version_0"
    folder.mkdir(parents=True)
    (folder / "hparams.yaml").write_text("lr: 0.01\n")
    rows = []
    for (t, v), (_, vv) in zip(log.train, log.val, strict=False):
        epoch, step = (int(t), int(t + 1) * 10 - 1) if log.axis == "epoch" else (0, int(t))
        rows.append({"epoch": epoch, "step": step, "train_loss": v, "val_loss": ""})
        rows.append({"epoch": epoch, "step": step, "train_loss": "", "val_loss": vv})
    with open(folder / "metrics.csv", "w", newline="") as fh:
        # Lightning's _ExperimentWriter: columns in first-appearance order of the logged keys, "step" added
        writer = csv.DictWriter(fh, fieldnames=["train_loss", "epoch", "step", "val_loss"])
        writer.writeheader()
        writer.writerows(rows)
    return root


def write_keras_csv(log: Log, root: Path) -> Path:
    path = root / "training.log"
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["epoch", "loss", "val_loss"])
        for (t, v), (_, vv) in zip(log.train, log.val, strict=False):
            writer.writerow([int(t), v, vv])
    return path


def write_keras_console(log: Log, root: Path) -> Path:
    lines = []
    total = len(log.train)
    for (t, v), (_, vv) in zip(log.train, log.val, strict=False):
        lines.append(f"Epoch {int(t) + 1}/{total}")
        lines.append(f" 8/16 [==============>...............] - ETA: 0s - loss: {v * 1.1:.4f}\r")
        lines.append(
            f"16/16 [==============================] - 0s 3ms/step - loss: {v:.4f} - val_loss: {vv:.4f}"
        )
    path = root / "fit_output.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def write_hf(log: Log, root: Path) -> Path:
    history: list[dict[str, float]] = []
    val = dict(log.val)
    for t, v in log.train:
        history.append(
            {"epoch": round(t / 16, 4), "grad_norm": 1.0, "learning_rate": 0.01, "loss": v, "step": int(t)}
        )
        if t in val:
            history.append(
                {"epoch": round(t / 16, 4), "eval_loss": val[t], "eval_runtime": 0.1, "step": int(t)}
            )
    state = {
        "best_metric": None,
        "epoch": log.train[-1][0] / 16,
        "global_step": int(log.train[-1][0]),
        "log_history": history,
        "max_steps": int(log.train[-1][0]),
        "trial_name": None,
    }
    folder = root / "output" / f"checkpoint-{int(log.train[-1][0])}"
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text(json.dumps(state, indent=2))
    return root / "output"


def write_tensorboard(log: Log, root: Path) -> Path:
    from torch.utils.tensorboard import SummaryWriter

    folder = root / "runs" / "exp1"
    writer = SummaryWriter(str(folder))
    for t, v in log.train:
        writer.add_scalar("train/loss", v, int(t))
    for t, v in log.val:
        writer.add_scalar("val/loss", v, int(t))
    for t, v in log.lr:
        writer.add_scalar("lr", v, int(t))
    writer.close()
    return root / "runs"


def _caffe_number(v: float) -> str:
    return "nan" if math.isnan(v) else ("inf" if math.isinf(v) else f"{v:.6g}")


def write_caffe(log: Log, root: Path) -> Path:
    lines = ["I1122 10:00:00.000000  4242 solver.cpp:60] Solving LeNet"]
    val = dict(log.val)
    lr = dict(log.lr)
    for t, v in log.train:
        it = int(t)
        if it in val:
            lines.append(f"I1122 10:00:01.000000  4242 solver.cpp:330] Iteration {it}, Testing net (#0)")
            lines.append(
                f"I1122 10:00:01.000000  4242 solver.cpp:397]     Test net output #0: loss = "
                f"{_caffe_number(val[it])} (* 1 = {_caffe_number(val[it])} loss)"
            )
        lines.append(
            f"I1122 10:00:01.000000  4242 solver.cpp:218] Iteration {it} (50 iter/s, 0.2s/10 iters), loss = {_caffe_number(v)}"
        )
        lines.append(
            f"I1122 10:00:01.000000  4242 solver.cpp:237]     Train net output #0: loss = {_caffe_number(v)} "
            f"(* 1 = {_caffe_number(v)} loss)"
        )
        lines.append(
            f"I1122 10:00:01.000000  4242 sgd_solver.cpp:105] Iteration {it}, lr = {_caffe_number(lr.get(t, 0.01))}"
        )
    path = root / "caffe.INFO"
    path.write_text("\n".join(lines) + "\n")
    return path


def write_jsonl(log: Log, root: Path) -> Path:
    val = dict(log.val)
    key = "epoch" if log.axis == "epoch" else "step"
    lines = []
    for t, v in log.train:
        entry: dict[str, float] = {key: t, "train/loss": v}
        if t in val:
            entry["val/loss"] = val[t]
        lines.append(json.dumps(entry))
    path = root / "metrics.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def write_tracker_csv(log: Log, root: Path) -> Path:
    val = dict(log.val)
    path = root / "export.csv"
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["Step", "run-7 - train/loss", "run-7 - val/loss"])
        for t, v in log.train:
            writer.writerow([int(t), v, val.get(t, "")])
    return path


WRITERS: dict[str, Callable[[Log, Path], Path]] = {
    "lightning_csv": write_lightning,
    "keras_csv": write_keras_csv,
    "keras_console": write_keras_console,
    "hf_trainer_state": write_hf,
    "tensorboard": write_tensorboard,
    "caffe": write_caffe,
    "jsonl": write_jsonl,
    "csv": write_tracker_csv,
}

#: (name, expected verdict, format, how to train; the run's length for `since` tolerance comes from the log)
RUNS: list[tuple[str, str, str, Callable[[], Log]]] = [
    ("healthy_a", "healthy", "lightning_csv", lambda: classify_run(n_train=2048, label_noise=0.1, epochs=20)),
    (
        "healthy_b",
        "healthy",
        "keras_console",
        lambda: classify_run(n_train=2048, label_noise=0.2, epochs=25, seed=1),
    ),
    (
        "healthy_c",
        "healthy",
        "tensorboard",
        lambda: classify_run(n_train=2048, label_noise=0.1, epochs=6, batch=128, per_step=True, seed=2),
    ),
    (
        "overfit_a",
        "overfitting",
        "keras_csv",
        lambda: classify_run(n_train=64, label_noise=0.3, hidden=256, epochs=150),
    ),
    (
        "overfit_b",
        "overfitting",
        "hf_trainer_state",
        lambda: classify_run(
            n_train=64, label_noise=0.3, hidden=256, epochs=150, batch=16, per_step=True, seed=1
        ),
    ),
    (
        "overfit_c",
        "overfitting",
        "jsonl",
        lambda: classify_run(n_train=96, label_noise=0.4, hidden=256, epochs=120, seed=2),
    ),
    (
        "data_a",
        "data_problem",
        "csv",
        lambda: classify_run(n_train=2048, label_noise=0.75, lr=3e-4, epochs=25),
    ),
    (
        "data_b",
        "data_problem",
        "lightning_csv",
        lambda: classify_run(n_train=2048, label_noise=0.8, lr=3e-4, epochs=25, seed=1),
    ),
    ("plateau_a", "plateau", "caffe", lambda: classify_run(n_train=1024, lr=1e-6, epochs=8, per_step=True)),
    ("plateau_b", "plateau", "keras_csv", lambda: classify_run(n_train=1024, lr=1e-6, epochs=30, seed=1)),
    ("diverge_a", "diverging", "jsonl", lambda: regression_run(factor=1.02, steps=300)),
    (
        "diverge_b",
        "diverging",
        "keras_console",
        lambda: _as_epochs(regression_run(factor=1.03, steps=300, seed=1)),
    ),
    (
        "unstable_a",
        "unstable",
        "hf_trainer_state",
        lambda: classify_run(n_train=1024, epochs=8, outliers=0.02, per_step=True, batch=16, lr=3e-3),
    ),
    (
        "unstable_b",
        "unstable",
        "tensorboard",
        lambda: classify_run(n_train=1024, epochs=8, outliers=0.03, per_step=True, batch=16, lr=3e-3, seed=1),
    ),
    ("nonfinite_a", "nonfinite", "caffe", lambda: regression_run(factor=0.5, steps=150, poly_max_iter=100)),
    ("nonfinite_b", "nonfinite", "csv", lambda: regression_run(factor=1.5, steps=200)),
]


def _as_epochs(log: Log) -> Log:
    """Per-epoch averages of a per-step log (10 steps an epoch), as Keras reports them."""
    out = Log("epoch")
    for e in range(len(log.train) // 10):
        chunk = [v for _, v in log.train[e * 10 : (e + 1) * 10]]
        out.train.append((e, sum(chunk) / len(chunk)))
        out.val.append((e, log.val[e][1]))
    out.onset = min(out.train, key=lambda p: p[1])[0]
    return out


def written_step(fmt: str, log: Log, t: float) -> float:
    """Where point ``t`` of the log lands on the axis its format's file records."""
    if fmt == "lightning_csv" and log.axis == "epoch":
        return (int(t) + 1) * 10 - 1  # Lightning records the global step at the end of each epoch
    return t


def first_bad(log: Log) -> float | None:
    bad = [t for series in (log.train, log.val, log.lr) for t, v in series if not math.isfinite(v)]
    return min(bad) if bad else None


def generate(root: Path) -> list[tuple[str, str, str, Path, Log]]:
    out = []
    for name, verdict, fmt, train in RUNS:
        folder = root / name
        folder.mkdir(parents=True)
        log = train()
        out.append((name, verdict, fmt, WRITERS[fmt](log, folder), log))
    return out
