"""``nanscope.check``: the checks a long run deserves before it starts, on a model, its data and its optimizer."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from nanscope.errors import UsageError
from nanscope.localize.replay import RngState
from nanscope.preflight import checks, model_checks, trial
from nanscope.preflight.probe import Probe
from nanscope.preflight.report import CheckReport, Finding

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
    at most ``scan_seconds``), ``label_out_of_range`` (integer class targets of ``(inputs, target)`` samples
    against the model's number of outputs), ``eps_zero`` (``optimizer`` and normalization layers),
    ``lr_schedule_nonfinite`` (``scheduler`` dry-run over ``schedule_steps``, default its ``total_steps`` or
    1000, then put back), ``unnormalized_inputs`` and ``constant_features`` (input statistics of up to 1,000
    samples), ``initial_loss`` (with ``loss_fn(output, target)``, on a batch of up to 64 samples). Nothing is
    trained; the model, optimizer, scheduler and random streams are left as
    they were.
    """
    if not isinstance(model, nn.Module):
        raise UsageError(f"nanscope.check(): model must be an nn.Module; got {type(model).__name__}")
    dataset = getattr(data, "dataset", data)
    if not hasattr(dataset, "__getitem__"):
        raise UsageError(
            f"nanscope.check(): data must be a Dataset or a DataLoader over one; got {type(data).__name__}"
        )
    findings: list[Finding] = []
    checked: list[str] = []

    def run(code: str, found: list[Finding]) -> None:
        findings.extend(found)
        if not found:
            checked.append(code)

    workers = int(getattr(data, "num_workers", 0) or 0)  # a DataLoader's: the scan reads as training does
    run("nonfinite_samples", checks.nonfinite_samples(dataset, scan_seconds, workers))
    scale, flat = checks.input_scale(dataset)
    run("unnormalized_inputs", scale)
    run("constant_features", flat)
    outputs = _outputs(model, dataset)
    if outputs is not None and outputs > 1:
        run("label_out_of_range", checks.label_out_of_range(dataset, outputs, ignore_index))
    not_checked: dict[str, str] = {}
    if loss_fn is not None:
        batch = _first_batch(dataset, 64)
        if batch is None:
            not_checked["model"] = "the first samples do not stack into an (inputs, target) batch"
        else:
            found, passed, skipped = trial.on_copy(model, batch, loss_fn, optimizer)
            findings.extend(found)
            checked.extend(passed)
            not_checked.update(skipped)
    run("eps_zero", checks.eps_zero(model, [optimizer] if optimizer is not None else []))
    if scheduler is not None:
        steps = schedule_steps or checks.planned_steps(scheduler, 1000)
        run("lr_schedule_nonfinite", checks.lr_schedule_nonfinite(scheduler, steps))
    return CheckReport(
        findings=tuple(findings),
        checked=tuple(checked),
        environment={"torch": torch.__version__, "samples": _length(dataset), "not_checked": not_checked},
    )


def probed(
    probe: Probe, *, schedule_steps: int | None = None, ignore_index: int = -100, scan_seconds: float = 60.0
) -> CheckReport:
    """The report of ``nanscope check script.py``: the checks on what :class:`Probe` learned of the script."""
    findings: list[Finding] = []
    checked: list[str] = []
    not_checked: dict[str, str] = {}

    def run(code: str, found: list[Finding]) -> None:
        findings.extend(found)
        if not found:
            checked.append(code)

    recorded = probe.recorder.result if probe.recorder is not None else None
    classes = recorded.loss.classes if recorded is not None and recorded.loss is not None else None
    if not probe.datasets:
        not_checked["data"] = "the script drew no batch from a DataLoader before it stopped"
    for dataset in probe.datasets:
        run(
            "nonfinite_samples",
            checks.nonfinite_samples(dataset, scan_seconds, probe.workers.get(id(dataset), 0)),
        )
        scale, flat = checks.input_scale(dataset)
        run("unnormalized_inputs", scale)
        run("constant_features", flat)
        if classes is not None and classes > 1:
            run("label_out_of_range", checks.label_out_of_range(dataset, classes, ignore_index))
    if recorded is not None and probe.updates:
        found, passed = model_checks.iteration_findings(recorded)
        findings.extend(found)
        checked.extend(passed)
    elif not probe.models:
        not_checked["model"] = "the script created no optimizer and ran no backward() before it stopped"
    else:
        not_checked["model"] = "the script made no optimizer step before it stopped"
    if probe.overfit_skipped is not None:
        not_checked["cannot_overfit_batch"] = probe.overfit_skipped
    elif probe.updates:
        found, why = model_checks.overfit_findings(
            model_checks.Overfit(
                tuple(probe.overfit_losses), where=", ".join(type(m).__name__ for m in probe.models)
            ),
            probe.steps,
        )
        findings.extend(found)
        if why is not None:
            not_checked["cannot_overfit_batch"] = why
        elif not found:
            checked.append("cannot_overfit_batch")
    models: list[nn.Module | None] = list(probe.models) or [None]
    run(
        "eps_zero",
        [f for i, m in enumerate(models) for f in checks.eps_zero(m, probe.optimizers if i == 0 else [])],
    )
    for scheduler, state, groups in probe.schedulers:
        scheduler.load_state_dict(state)  # as it was at the first step: the dry run starts there
        for group, before in zip(scheduler.optimizer.param_groups, groups, strict=False):
            group.update(before)
        steps = schedule_steps or checks.planned_steps(scheduler, 1000)
        run("lr_schedule_nonfinite", checks.lr_schedule_nonfinite(scheduler, steps))
    return CheckReport(
        findings=_unique(findings),
        checked=tuple(dict.fromkeys(c for c in checked if all(f.code != c for f in findings))),
        environment={
            "torch": torch.__version__,
            "samples": [_length(d) for d in probe.datasets],
            "optimizer_steps": probe.updates,
            "models": [type(m).__name__ for m in probe.models],
            "not_checked": not_checked,
        },
    )


def _unique(findings: list[Finding]) -> tuple[Finding, ...]:
    seen: set[tuple[str, str, str]] = set()
    out = []
    for f in findings:
        key = (f.code, f.where, f.message)
        if key not in seen:
            seen.add(key)
            out.append(f)
    return tuple(out)


def _outputs(model: nn.Module, dataset: Any) -> int | None:
    """The model's number of outputs, from one sample made into a batch of one."""
    rng = RngState.capture(numpy=True)  # a random transform must not move the run's streams
    try:
        sample = dataset[0]
    except Exception:
        return None
    finally:
        rng.restore()
    inputs = sample[0] if isinstance(sample, (tuple, list)) else sample
    if not isinstance(inputs, torch.Tensor):
        return None
    return checks.num_outputs(model, inputs.unsqueeze(0))


def _first_batch(dataset: Any, size: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The first ``size`` ``(inputs, target)`` samples stacked into a batch (``None`` if they do not stack)."""
    rng = RngState.capture(numpy=True)
    try:
        samples = [dataset[i] for i in range(min(_length(dataset) or 0, size))]
        xs = torch.stack([s[0] for s in samples])
        ys = torch.stack([torch.as_tensor(s[1]) for s in samples])
    except (TypeError, RuntimeError, IndexError):
        return None
    finally:
        rng.restore()
    return xs, ys


def _length(dataset: Any) -> int | None:
    try:
        return len(dataset)
    except TypeError:
        return None
