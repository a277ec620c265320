"""Concrete fixes for a cause, drawn from the field's folk wisdom (``../shared/seeds``) and fitted to the
evidence: the named samples, parameter, hyperparameter and the run's own grad-norm history."""

from __future__ import annotations

import math

from nanscope.report.model import Cause, DatasetScan, History

__all__ = ["clip_hint", "suggestions_for"]


def clip_hint(history: History, script_clip: tuple[str, float] | None = None) -> str:
    """A clipping call with ``max_norm`` at 2x the typical grad norm of the run's *early* steps (the first fifth
    of the history): in a diverging run the later norms are the problem, not the reference. When the script
    already clips by norm, the advice is never looser than its own limit."""
    norms = [v for v in history.grad_norm if v is not None and math.isfinite(v)]
    typical = None
    if len(norms) >= 5:
        early = sorted(norms[: max(5, len(norms) // 5)])
        typical = early[len(early) // 2]
    if script_clip is not None and script_clip[0] == "norm":
        limit = script_clip[1]
        if typical is not None and 2 * typical < limit:
            return (
                f"the script already clips at max_norm={limit:g}; tighten it to {2 * typical:.3g} (2x the median "
                f"grad norm of the run's early steps, {typical:.3g}) — clipping slows an explosion, it cannot "
                "remove a NaN/Inf once an op made one"
            )
        return (
            f"the script already clips at max_norm={limit:g}, and clipping cannot remove a NaN/Inf once an op "
            "made one: fix the op, or lower the learning rate"
        )
    if typical is not None:
        return (
            f"torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm={2 * typical:.3g}) (2x the median "
            f"grad norm of the run's early steps, {typical:.3g})"
        )
    return "torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)"


def suggestions_for(
    cause: Cause,
    history: History,
    script_clip: tuple[str, float] | None = None,
    scan: DatasetScan | None = None,
) -> tuple[str, ...]:
    """``scan``: the whole dataset read after a ``nonfinite_input`` diagnosis (every dirty sample)."""
    kind = cause.kind
    if kind == "nonfinite_input":
        if scan is not None and scan.dirty:
            shown = list(scan.dirty[:20])
            more = f" (and {len(scan.dirty) - 20} more, listed in the report)" if len(scan.dirty) > 20 else ""
            whole = (
                f"every sample of {scan.dataset} was read"
                if scan.complete
                else f"{scan.scanned} of {scan.total} samples were read in the time allowed (--scan-seconds)"
            )
            first = (
                f"Repair or drop dataset samples {shown}{more}: {whole}, and these hold NaN/Inf after the "
                "Dataset's own transforms (dirty data, a transform that divides by a zero std or takes log of "
                "0, a failed decode). `nanscope run --policy quarantine+skip --quarantine FILE` drops them all "
                "at once and keeps them out of later runs."
            )
        else:
            who = (
                f"dataset samples {list(cause.samples)[:20]}" if cause.samples else "the offending batch rows"
            )
            first = (
                f"Repair or drop {who}: they contain NaN/Inf before the model sees them (dirty data, a transform "
                "that divides by a zero std or takes log of 0, a failed decode)."
            )
        return (
            first,
            "Fix the transform or the source that produced the bad values, and check every sample's inputs and "
            "targets with `torch.isfinite(x).all()` once before training.",
            "Normalize inputs (subtract the mean, divide by the std plus a small eps) so no feature is out of range.",
        )
    if kind == "not_reproducible":
        return (
            "Under --policy skip or rollback nanscope retries such a step: the replayed step's finite update is "
            "applied in place of the failing one, and the run goes on.",
            "If it recurs, suspect the machine: check the GPU's error counters and run its diagnostics "
            "(`nvidia-smi -q -d ECC,PAGE_RETIREMENT`, `dcgmi diag -r 3`), and move the job to another node.",
            "To rule out non-deterministic kernels, run the failing steps with "
            "`torch.use_deterministic_algorithms(True)` (and CUBLAS_WORKSPACE_CONFIG=:4096:8).",
        )
    if kind == "nonfinite_parameters":
        name = cause.parameter or "the named weights"
        return (
            f"`{name}` was non-finite before training touched it: reload an earlier, clean checkpoint.",
            "After loading a checkpoint, check it: "
            "`bad = [k for k, v in sd.items() if v.is_floating_point() and not torch.isfinite(v).all()]`.",
            "If the checkpoint was saved from a run that had already diverged, save only after a finite check.",
        )
    if kind == "invalid_hyperparameter":
        key = cause.hyperparameter or "the hyperparameter"
        last = history.last("lr")
        after = f" (last finite value {last:.4g})" if last is not None and key == "lr" else ""
        return (
            f"Fix the schedule that set `{key}` to a non-finite value{after}: check the LR lambda / policy for "
            "0-divisions and powers of negative numbers (e.g. a `poly` policy without `max_iter`).",
            "Guard the schedule: clamp it, e.g. `lr = max(min_lr, min(max_lr, lr))`, and assert it is finite.",
        )
    if kind == "optimizer_update":
        tips = []
        if any(ev.data.get("eps") == 0 for ev in cause.evidence):
            tips.append(
                "Set the optimizer's `eps` > 0 (the default 1e-8): with eps=0, Adam divides 0 by 0 where a "
                "weight has received only zero gradients."
            )
        tips.append(f"Lower the learning rate by 10x and clip gradients: {clip_hint(history, script_clip)}.")
        tips.append("Check custom optimizer code and its state for divisions without an eps.")
        return tuple(tips)
    # undetermined, and kinds the localizer adds later: the likely culprits of the phase first
    if cause.phase in ("forward", "loss"):
        tips = [
            "Look for log/div/sqrt/exp on values that can reach 0 or grow large: use log_softmax or "
            "logsumexp instead of log(softmax), BCEWithLogitsLoss instead of sigmoid + BCELoss, "
            "clamp_min(eps) before log/sqrt and an eps in every denominator."
        ]
    else:
        tips = [
            "Look for ops whose derivative is infinite at the value seen: sqrt at 0 (norms/std of a constant "
            "input), acos/asin at +/-1, pow with an exponent < 1 at 0; add an eps inside them."
        ]
    tips += [
        "If the loss or grad norm grew over the steps before, lower the learning rate by 10x or add warm-up.",
        f"Clip gradients: {clip_hint(history, script_clip)}.",
        "If training in float16, switch to bfloat16 or use torch.amp.GradScaler.",
    ]
    return tuple(tips)
