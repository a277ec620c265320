"""Pre-flight checks, one function per code: each returns its findings (empty: checked and passed).

``nonfinite_samples``: every dataset index whose sample holds NaN/Inf after the Dataset's own transforms
(:func:`nanscope.localize.dataset_scan.scan_dataset`; bounded in time, coverage reported).
``label_out_of_range``: integer class targets outside ``[0, num_outputs)`` other than ``ignore_index``.
``eps_zero``: an optimizer param group or a normalization layer with ``eps == 0`` (a zero second moment or a
constant feature then divides 0 by 0). ``lr_schedule_nonfinite``: the LR scheduler, dry-run over the run's
planned length and put back as it was, produces a NaN/Inf or negative learning rate.
``unnormalized_inputs`` / ``constant_features``: per-feature statistics of the inputs of up to 1,000 samples
(mean beyond +/-10 or std above 100: warning; a feature with std 0: info). The model-side codes are in
:mod:`nanscope.preflight.model_checks`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from nanscope.localize.dataset_scan import scan_dataset
from nanscope.localize.replay import RngState
from nanscope.preflight.report import Finding

__all__ = [
    "eps_zero",
    "input_scale",
    "label_out_of_range",
    "lr_schedule_nonfinite",
    "nonfinite_samples",
]


def nonfinite_samples(dataset: Any, seconds: float = 60.0, workers: int = 0) -> list[Finding]:
    scan = scan_dataset(dataset, seconds=seconds, workers=workers)
    if scan is None or not scan.dirty:
        return []
    coverage = {"scanned": scan.scanned, "total": scan.total, "seconds": scan.seconds, "failed": scan.failed}
    return [
        Finding(
            "nonfinite_samples",
            "error",
            f"dataset {scan.dataset}",
            scan.text(),
            "Repair or drop these samples, or fix the transform that produced NaN/Inf (a division by a zero "
            "std, a log of 0, a failed decode); `nanscope run --policy quarantine+skip` keeps them out.",
            samples=scan.dirty,
            evidence=coverage,
        )
    ]


def _class_target(sample: Any) -> int | None:
    """The integer class target of a ``(inputs, target)`` sample, if it has one."""
    if not isinstance(sample, (tuple, list)) or len(sample) < 2:
        return None
    target = sample[-1]
    if isinstance(target, torch.Tensor) and target.dim() == 0 and not target.is_floating_point():
        return int(target)
    if isinstance(target, int) and not isinstance(target, bool):
        return target
    return None


def label_out_of_range(
    dataset: Any, num_outputs: int, ignore_index: int = -100, limit: int = 100_000
) -> list[Finding]:
    """Class targets of ``(inputs, target)`` samples outside ``[0, num_outputs)`` (first ``limit`` samples)."""
    try:
        total = len(dataset)
    except TypeError:
        return []
    bad: dict[int, int] = {}  # index -> its target
    with RngState.kept(numpy=True):  # random transforms must not move the run's streams
        for i in range(min(total, limit)):
            target = _class_target(dataset[i])
            if target is None:
                if i == 0:
                    return []  # not a classification dataset of (inputs, class) pairs
                continue
            if target != ignore_index and not 0 <= target < num_outputs:
                bad[i] = target
    if not bad:
        return []
    values = sorted(set(bad.values()))
    return [
        Finding(
            "label_out_of_range",
            "error",
            f"dataset {type(dataset).__name__}",
            f"{len(bad)} sample(s) have class targets {values[:10]} outside [0, {num_outputs}) (the model has "
            f"{num_outputs} outputs; ignore_index {ignore_index} is allowed)",
            "Map the labels to 0..C-1 (and give the last layer one output per class); on CUDA an out-of-range "
            "target is a device-side assert, on CPU an IndexError or a silent wrong loss.",
            samples=tuple(list(bad)[:1000]),
            evidence={"num_outputs": num_outputs, "targets": values[:100]},
        )
    ]


_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def eps_zero(model: nn.Module | None, optimizers: Iterable[torch.optim.Optimizer]) -> list[Finding]:
    found = []
    for o, opt in enumerate(optimizers):
        for g, group in enumerate(opt.param_groups):
            eps = group.get("eps")
            if isinstance(eps, (int, float)) and not isinstance(eps, bool) and eps == 0:
                found.append(
                    Finding(
                        "eps_zero",
                        "warning",
                        f"{type(opt).__name__} (optimizer {o}) param_groups[{g}]",
                        f"{type(opt).__name__} has eps=0: a parameter whose gradient is 0 from the start has a "
                        "zero second moment, and its update is 0/0 = NaN",
                        "Keep the default eps (1e-8) or at least 1e-12.",
                        evidence={"eps": eps},
                    )
                )
    for name, module in model.named_modules() if model is not None else ():
        if isinstance(module, _NORMS) and getattr(module, "eps", None) == 0:
            found.append(
                Finding(
                    "eps_zero",
                    "warning",
                    f"module {name or type(module).__name__}",
                    f"{type(module).__name__} has eps=0: a constant feature (zero variance) divides 0 by 0",
                    "Keep the default eps (1e-5).",
                    evidence={"eps": 0.0},
                )
            )
    return found


def lr_schedule_nonfinite(scheduler: Any, steps: int) -> list[Finding]:
    """Step ``scheduler`` ``steps`` times without training, read every param group's LR, and put the
    scheduler and its optimizer's learning rates back as they were."""
    optimizer = getattr(scheduler, "optimizer", None)
    if optimizer is None or not hasattr(scheduler, "state_dict"):
        return []
    saved = scheduler.state_dict()
    groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    bad: tuple[int, int, float] | None = None
    error: str | None = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "lr_scheduler.step() before optimizer.step()"
            for step in range(1, steps + 1):
                try:
                    scheduler.step()
                except Exception as exc:  # e.g. OneCycleLR stepped past its total_steps
                    error = f"{type(exc).__name__}: {exc}"
                    bad = (step, -1, math.nan)
                    break
                for g, group in enumerate(optimizer.param_groups):
                    lr = group.get("lr")
                    value = float(lr) if isinstance(lr, (int, float, torch.Tensor)) else 0.0
                    if not math.isfinite(value) or value < 0:
                        bad = (step, g, value)
                        break
                if bad is not None:
                    break
    finally:
        scheduler.load_state_dict(saved)
        for group, before in zip(optimizer.param_groups, groups, strict=True):
            group.update(before)
    if bad is None:
        return []
    step, g, value = bad
    what = f"raised {error}" if error else f"gives param_groups[{g}] lr = {value}"
    return [
        Finding(
            "lr_schedule_nonfinite",
            "error",
            f"{type(scheduler).__name__}",
            f"stepped {step} time(s) without training, the schedule {what} (dry run over the planned {steps} "
            "steps)",
            "Fix the schedule: check the lambda / milestones, the total number of steps it was built for, and "
            "the units of its step (per batch or per epoch); clamp it to a positive finite range.",
            evidence={"step": step, "group": g, "lr": value, "error": error},
        )
    ]


def planned_steps(scheduler: Any, default: int) -> int:
    """The run's planned length as the scheduler knows it (OneCycleLR's ``total_steps``), else ``default``."""
    total = getattr(scheduler, "total_steps", None)
    return int(total) if isinstance(total, int) and total > 0 else default


def num_outputs(model: nn.Module, inputs: torch.Tensor) -> int | None:
    """The last dimension of the model's output on a batch of ``inputs`` (eval mode, no gradients, the
    model's mode and RNG put back)."""
    training = model.training
    state = torch.get_rng_state()
    try:
        model.eval()
        with torch.no_grad():
            out = model(inputs)
    except Exception:
        return None
    finally:
        model.train(training)
        torch.set_rng_state(state)
    return int(out.shape[-1]) if isinstance(out, torch.Tensor) and out.dim() >= 1 else None


def _inputs(dataset: Any, limit: int) -> torch.Tensor | None:
    """The floating-point inputs of the first ``limit`` samples, stacked (``None`` when they do not stack)."""
    rows = []
    with RngState.kept(numpy=True):
        try:
            for i in range(min(len(dataset), limit)):
                sample = dataset[i]
                x = sample[0] if isinstance(sample, (tuple, list)) else sample
                if not isinstance(x, torch.Tensor) or not x.is_floating_point():
                    return None
                rows.append(x.detach().reshape(-1).double())
            return torch.stack(rows) if len(rows) >= 2 else None
        except (TypeError, RuntimeError):
            return None


def input_scale(dataset: Any, limit: int = 1000) -> tuple[list[Finding], list[Finding]]:
    """``(unnormalized_inputs, constant_features)`` findings from per-feature statistics of the inputs."""
    x = _inputs(dataset, limit)
    if x is None:
        return [], []
    finite = torch.isfinite(x).all(dim=0)
    x = x[:, finite]
    if not x.numel():
        return [], []
    mean, std = x.mean(dim=0), x.std(dim=0)
    where = f"dataset {type(dataset).__name__} inputs"
    scale: list[Finding] = []
    big_mean, big_std = float(mean.abs().max()), float(std.max())
    if big_mean > 10 or big_std > 100:
        scale.append(
            Finding(
                "unnormalized_inputs",
                "warning",
                where,
                f"input features have means up to {big_mean:.3g} and standard deviations up to {big_std:.3g} "
                f"(over {x.shape[0]} samples): far from unit scale, the stable learning rate becomes tiny and "
                "activations overflow sooner",
                "Standardize the inputs: subtract the per-feature mean and divide by its std (plus a small eps), "
                "computed on the training set.",
                evidence={"max_abs_mean": big_mean, "max_std": big_std, "samples": x.shape[0]},
            )
        )
    constant = torch.nonzero(std == 0).reshape(-1).tolist()
    flat: list[Finding] = []
    if constant:
        flat.append(
            Finding(
                "constant_features",
                "info",
                where,
                f"{len(constant)} input feature(s) never change over {x.shape[0]} samples (flat positions "
                f"{constant[:10]}): they carry no information, and a per-feature standardization divides them "
                "0 by 0",
                "Drop them, or add an eps to the std in the normalization.",
                evidence={"features": constant[:100], "samples": x.shape[0]},
            )
        )
    return scale, flat
