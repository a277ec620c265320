"""``nanscope.check``: the checks a long run deserves before it starts, on a model, its data and its optimizer."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from nanscope.errors import UsageError
from nanscope.localize.replay import RngState
from nanscope.preflight import checks, model_checks, trial
from nanscope.preflight.probe import Probe
from nanscope.preflight.report import CheckReport, Results

__all__ = ["check", "probed"]


def check(
    model: nn.Module,
    data: Any,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    loss_fn: Any = None,
    schedule_steps: int | None = None,
    ignore_index: int = -100,
    scan_seconds: float = 60.0,
) -> CheckReport:
    """Check ``model`` with ``data`` (a Dataset, or a DataLoader over one) before training.

    Codes (docs/check.md): ``nonfinite_samples`` (the whole dataset read through its own ``__getitem__``,
    at most ``scan_seconds``, in as many worker processes as a DataLoader's ``num_workers``),
    ``label_out_of_range`` (integer class targets of ``(inputs, target)`` samples against the model's number of
    outputs), ``eps_zero`` (``optimizer`` and normalization layers), ``lr_schedule_nonfinite`` (``scheduler``
    dry-run over ``schedule_steps``, default its ``total_steps`` or 1000, then put back),
    ``unnormalized_inputs`` and ``constant_features`` (input statistics of up to 1,000 samples). With
    ``loss_fn(output, target)``, on a copy of the model and the first 64 samples: the loss-graph, activation,
    gradient and first-update codes and ``initial_loss``, then ``cannot_overfit_batch`` (the copy trained on
    the first 8 samples by the reference optimizer). The model, optimizer, scheduler and random streams are
    left as they were.
    """
    if not isinstance(model, nn.Module):
        raise UsageError(f"nanscope.check(): model must be an nn.Module; got {type(model).__name__}")
    dataset = getattr(data, "dataset", data)
    if not hasattr(dataset, "__getitem__"):
        raise UsageError(
            f"nanscope.check(): data must be a Dataset or a DataLoader over one; got {type(data).__name__}"
        )
    results = Results()
    workers = int(getattr(data, "num_workers", 0) or 0)  # a DataLoader's: the scan reads as training does
    _data_checks(results, dataset, workers, _outputs(model, dataset), ignore_index, scan_seconds)
    if loss_fn is not None:
        batch = _first_batch(dataset, 64)
        if batch is None:
            results.not_checked["model"] = "the first samples do not stack into an (inputs, target) batch"
        else:
            trial.on_copy(results, model, batch, loss_fn, optimizer)
    results.run("eps_zero", checks.eps_zero(model, [optimizer] if optimizer is not None else []))
    if scheduler is not None:
        steps = schedule_steps or checks.planned_steps(scheduler, 1000)
        results.run("lr_schedule_nonfinite", checks.lr_schedule_nonfinite(scheduler, steps))
    return results.report({"torch": torch.__version__, "samples": _length(dataset)})


def probed(
    probe: Probe, *, schedule_steps: int | None = None, ignore_index: int = -100, scan_seconds: float = 60.0
) -> CheckReport:
    """The report of ``nanscope check script.py``: the checks on what :class:`Probe` learned of the script."""
    results = Results()
    recorded = probe.recorder.result if probe.recorder is not None else None
    classes = recorded.loss.classes if recorded is not None and recorded.loss is not None else None
    if not probe.datasets:
        results.not_checked["data"] = "the script drew no batch from a DataLoader before it stopped"
    for dataset in probe.datasets:
        _data_checks(results, dataset, probe.workers.get(id(dataset), 0), classes, ignore_index, scan_seconds)
    if recorded is not None and probe.updates:
        results.add(*model_checks.iteration_findings(recorded))
    elif not probe.models:
        results.not_checked["model"] = (
            "the script created no optimizer and ran no backward() before it stopped"
        )
    else:
        results.not_checked["model"] = "the script made no optimizer step before it stopped"
    if probe.overfit_skipped is not None:
        results.not_checked["cannot_overfit_batch"] = probe.overfit_skipped
    elif probe.updates:
        where = ", ".join(type(m).__name__ for m in probe.models)
        overfit = model_checks.Overfit(tuple(probe.overfit_losses), where=where)
        results.maybe("cannot_overfit_batch", *model_checks.overfit_findings(overfit, probe.steps))
    # the optimizers' eps once, the normalization layers' of every model
    eps = checks.eps_zero(probe.models[0] if probe.models else None, probe.optimizers)
    eps += [f for m in probe.models[1:] for f in checks.eps_zero(m, [])]
    results.run("eps_zero", eps)
    for scheduler, state, groups in probe.schedulers:
        scheduler.load_state_dict(state)  # as it was at the first step: the dry run starts there
        for group, before in zip(scheduler.optimizer.param_groups, groups, strict=False):
            group.update(before)
        steps = schedule_steps or checks.planned_steps(scheduler, 1000)
        results.run("lr_schedule_nonfinite", checks.lr_schedule_nonfinite(scheduler, steps))
    return results.report(
        {
            "torch": torch.__version__,
            "samples": [_length(d) for d in probe.datasets],
            "optimizer_steps": probe.updates,
            "models": [type(m).__name__ for m in probe.models],
        }
    )


def _data_checks(
    results: Results, dataset: Any, workers: int, classes: int | None, ignore_index: int, scan_seconds: float
) -> None:
    """The checks of one dataset: every sample for NaN/Inf, the inputs' scale, class targets (``classes``:
    the model's outputs, when it is a classifier)."""
    results.run("nonfinite_samples", checks.nonfinite_samples(dataset, scan_seconds, workers))
    scale, flat = checks.input_scale(dataset)
    results.run("unnormalized_inputs", scale)
    results.run("constant_features", flat)
    if classes is not None and classes > 1:
        results.run("label_out_of_range", checks.label_out_of_range(dataset, classes, ignore_index))


def _outputs(model: nn.Module, dataset: Any) -> int | None:
    """The model's number of outputs, from one sample made into a batch of one."""
    with RngState.kept(numpy=True):  # a random transform must not move the run's streams
        try:
            sample = dataset[0]
        except Exception:
            return None
    inputs = sample[0] if isinstance(sample, (tuple, list)) else sample
    if not isinstance(inputs, torch.Tensor):
        return None
    return checks.num_outputs(model, inputs.unsqueeze(0))


def _first_batch(dataset: Any, size: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The first ``size`` ``(inputs, target)`` samples stacked into a batch (``None`` if they do not stack)."""
    with RngState.kept(numpy=True):
        try:
            samples = [dataset[i] for i in range(min(_length(dataset) or 0, size))]
            return torch.stack([s[0] for s in samples]), torch.stack([torch.as_tensor(s[1]) for s in samples])
        except (TypeError, RuntimeError, IndexError):
            return None


def _length(dataset: Any) -> int | None:
    try:
        return len(dataset)
    except TypeError:
        return None
