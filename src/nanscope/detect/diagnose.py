"""From what the watcher measured at a failing step to a diagnosis: where, which kind, which samples.

:func:`diagnose` is pure: the watcher collects an :class:`Observation` (only measurements) and this module
turns it into a :class:`Diagnosis`. Kinds that need op-level evidence (overflow, domain_error,
singular_gradient, gradient_explosion) are never guessed here: without that evidence the kind is
``undetermined`` and the summary says what is known.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from nanscope.detect.advice import clip_hint, suggestions_for
from nanscope.detect.scan import BadHyperparameter, BatchScan
from nanscope.localize.classify import classify
from nanscope.localize.classify import growth as fitted_growth
from nanscope.localize.trace import OpFinding
from nanscope.report.model import Cause, Evidence, FirstNonFinite, History, Phase, Where

__all__ = ["Diagnosis", "Observation", "diagnose", "lr_jump"]


@dataclass(frozen=True, slots=True)
class Observation:
    """What the watcher measured about one failing iteration.

    ``trigger`` is the always-on check that tripped and ``trigger_names`` what it found bad. The other fields
    come from exact checks run after the trigger: hyperparameters, weights and buffers *before* the step,
    the iteration's batches, whether the model's output was finite, and optimizer facts.
    """

    step: int
    trigger: Where
    trigger_names: tuple[str, ...]
    history: History
    hyperparameters: tuple[BadHyperparameter, ...] = ()
    parameters_before: tuple[str, ...] = ()
    batches: tuple[BatchScan, ...] = ()
    batches_tracked: bool = False
    model_output_finite: bool | None = None
    optimizer_notes: tuple[Evidence, ...] = ()
    buffers_touched: tuple[str, ...] = ()
    op: OpFinding | None = None  # from replaying the step under op tracing
    op_samples: tuple[int, ...] | None = None  # dataset indices of the rows the op turned non-finite
    replay_note: str | None = None  # why there was no replay, if there was none
    op_whole_batch: bool = False  # every row went non-finite: a property of the batch, not of samples
    # the failing iteration was replayed from the same batch, weights and RNG state, and every op was finite
    replay_finite: bool = False
    counterfactual: Evidence | None = None  # re-runs on parts of the batch (localize.counterfactual)
    # the origin op re-run with the same weights on the last good batch: True, it fails there too (the
    # weights, not the batch); False, finite there (the batch explains it); None, not measured
    last_good_fails: bool | None = None
    # (parameter, first, last grad norm), fastest first
    layer_growth: tuple[tuple[str, float, float], ...] = ()
    script_clip: tuple[str, float] | None = None  # ("norm" | "value", limit) when the script clips itself


@dataclass(frozen=True, slots=True)
class Diagnosis:
    first: FirstNonFinite
    cause: Cause
    suggestions: tuple[str, ...]


def _growth(history: History) -> Evidence | None:
    grow = fitted_growth(history)
    if grow is None:
        return None
    total, per_step, steps = grow
    return Evidence(
        "grad-norm trend",
        f"global grad norm changed x{total:.3g} over the last {steps} steps (x{per_step:.3g} per step, fitted)",
        {"factor": total, "factor_per_step": per_step, "steps": steps},
    )


def _layers(layers: tuple[tuple[str, float, float], ...]) -> Evidence:
    text = ", ".join(
        f"{name} x{last / first:.3g} ({first:.3g} -> {last:.3g})" for name, first, last in layers
    )
    return Evidence(
        "fastest-growing gradients",
        f"over the last steps: {text}",
        {"layers": [{"parameter": n, "first": f, "last": last} for n, f, last in layers]},
    )


def _input_cause(obs: Observation, bad: list[BatchScan]) -> tuple[FirstNonFinite, Cause]:
    paths = tuple(dict.fromkeys(t.path for scan in bad for t in scan.tensors))
    known = all(scan.samples is not None for scan in bad if scan.rows)
    samples = tuple(sorted({s for scan in bad for s in (scan.samples or ())})) if known else None
    samples = samples or None
    evidence = []
    for scan in bad:
        for t in scan.tensors:
            rows = "whole tensor" if t.rows is None else f"rows {list(t.rows[:20])}"
            evidence.append(
                Evidence(
                    "non-finite input",
                    f"{t.path} from {scan.source}: {t.nan} NaN, {t.inf} Inf ({rows})",
                    {
                        "path": t.path,
                        "source": scan.source,
                        "nan": t.nan,
                        "inf": t.inf,
                        "rows": None if t.rows is None else list(t.rows),
                    },
                )
            )
    where_rows = ", ".join(str(r) for r in sorted({r for scan in bad for r in scan.rows})[:20])
    if samples:
        who = f"dataset samples {', '.join(map(str, samples[:20]))}"
    elif where_rows:
        who = f"batch rows {where_rows} (dataset indices unknown: the batch did not come from a tracked DataLoader)"
    else:
        who = "tensors without a batch dimension"
    summary = f"the batch of step {obs.step} already holds NaN/Inf in {', '.join(paths)}: {who}"
    cause = Cause(
        kind="nonfinite_input", phase="data", summary=summary, samples=samples, evidence=tuple(evidence)
    )
    return FirstNonFinite(obs.step, "inputs", paths), cause


LR_JUMP = 100.0  # one step's lr at least this many times the step before's: a schedule jump, not a warm-up
LR_JUMP_WINDOW = 3  # ... within this many completed steps before the failing one
# kinds an lr jump explains: whatever op broke on the weights it blew up
_JUMP_EXPLAINS = ("overflow", "domain_error", "gradient_explosion", "undetermined", "singular_gradient")


def lr_jump(history: History) -> tuple[int, float, float] | None:
    """``(step, lr before, lr at that step)`` of the latest single-step jump of the learning rate by at least
    ``LR_JUMP`` in the last ``LR_JUMP_WINDOW`` completed steps. A warm-up rises by small factors per step (or
    starts from 0, which is no reference) and is never a jump."""
    steps, lrs = history.step[-LR_JUMP_WINDOW - 1 :], history.lr[-LR_JUMP_WINDOW - 1 :]
    for i in range(len(lrs) - 1, 0, -1):
        before, after = lrs[i - 1], lrs[i]
        if before is None or after is None or not before > 0 or not math.isfinite(after):
            continue
        if after / before >= LR_JUMP:
            return steps[i], before, after
    return None


def _schedule_jump(found: Diagnosis, obs: Observation) -> Diagnosis:
    """A failure right after the learning rate jumped by orders of magnitude is the schedule's doing, whatever
    op finally overflowed or took log(0) on the huge weights it left: the fix is the schedule, not an eps."""
    if found.cause.kind not in _JUMP_EXPLAINS:
        return found
    jump = lr_jump(obs.history)
    if jump is None:
        return found
    step, before, after = jump
    note = Evidence(
        "lr jump",
        f"the learning rate jumped x{after / before:.3g} at step {step} ({before:.4g} -> {after:.4g}); the updates "
        f"since made the weights huge, and step {obs.step} broke on them",
        {"step": step, "before": before, "after": after},
    )
    where = f" (it finally broke in `{found.cause.op}`)" if found.cause.op else ""
    cause = replace(
        found.cause,
        kind="invalid_hyperparameter",
        phase="schedule",
        hyperparameter="lr",
        samples=None,  # the schedule, not the data: any sample breaks on the weights it left
        summary=f"the learning rate jumped x{after / before:.3g} at step {step} ({before:.4g} -> {after:.4g}) and "
        f"the run diverged at step {obs.step}{where}",
        evidence=(note, *found.cause.evidence),
    )
    advice = (
        f"Fix the LR schedule: it multiplied the rate by {after / before:.3g} at step {step}. Check the "
        "scheduler's lambda/milestones and the units of its step (per batch vs per epoch); clamp it, e.g. "
        "`lr = min(max_lr, lr)`.",
        f"Clip gradients: {clip_hint(obs.history, obs.script_clip)}.",
    )
    return replace(found, cause=cause, suggestions=advice)


def diagnose(obs: Observation) -> Diagnosis:
    """The cause of the first non-finite value, from what was measured (see the module docstring)."""
    found = _schedule_jump(_diagnose(obs), obs)
    if obs.script_clip is None:
        return found
    kind, limit = obs.script_clip
    call = "clip_grad_norm_" if kind == "norm" else "clip_grad_value_"
    note = Evidence(
        "script clips",
        f"the script clips the gradients ({call} at {limit:g}); nanscope judged them as backward left them, "
        "before the clip (a clip spreads one NaN gradient to every parameter and cannot remove one)",
        {"clip": kind, "limit": limit},
    )
    cause = replace(found.cause, evidence=(*found.cause.evidence, note))
    return replace(found, cause=cause)


def _diagnose(obs: Observation) -> Diagnosis:
    """Turn one failing iteration's measurements into a diagnosis (pure; no tensors are touched)."""
    first: FirstNonFinite
    cause: Cause
    growth = _growth(obs.history)
    bad_inputs = [scan for scan in obs.batches if not scan.clean]
    touched = (
        (
            Evidence(
                "buffers updated from the bad values",
                f"{', '.join(obs.buffers_touched[:6])} turned non-finite during this step's forward (e.g. BatchNorm "
                "running statistics); they were finite when it started and must be restored before training on",
                {"names": list(obs.buffers_touched)},
            ),
        )
        if obs.buffers_touched
        else ()
    )
    if obs.hyperparameters:
        hp = obs.hyperparameters[0]
        names = tuple(h.name for h in obs.hyperparameters)
        # the history's lr is optimizer 0 / group 0: only then is it the broken value's own past
        own = hp.optimizer == 0 and hp.group == 0 and hp.key == "lr"
        last_lr = obs.history.last("lr") if own else None
        if own:
            detail = f"last finite lr {last_lr:.4g}" if last_lr is not None else "no finite lr seen before"
        else:
            detail = f"{hp.name} was finite at every earlier step (the check runs before each step)"
        cause = Cause(
            kind="invalid_hyperparameter",
            phase="schedule",
            summary=f"{hp.name} is {hp.value} at step {obs.step}; every update scales by it, so all weights "
            "it touches would turn non-finite",
            hyperparameter=hp.key,
            evidence=tuple(
                Evidence("hyperparameter", f"{h.name} = {h.value}", {"group": h.group, "key": h.key})
                for h in obs.hyperparameters
            )
            + (Evidence("schedule", detail, {"last_finite_lr": last_lr} if own else {}),),
        )
        first = FirstNonFinite(obs.step, "hyperparameters", names)
    elif obs.parameters_before:
        names = obs.parameters_before
        cause = Cause(
            kind="nonfinite_parameters",
            phase="forward",
            summary=f"{len(names)} weight/buffer tensor(s) were already non-finite before step {obs.step} "
            f"({', '.join(names[:5])}): they were loaded or modified that way, not produced by this step",
            parameter=names[0],
            evidence=(Evidence("non-finite before the step", ", ".join(names[:50]), {"names": list(names)}),),
        )
        first = FirstNonFinite(obs.step, "parameters", names)
    elif bad_inputs and obs.trigger in ("loss", "gradients"):
        first, cause = _input_cause(obs, bad_inputs)
        cause = replace(cause, evidence=cause.evidence + touched)
    elif obs.trigger == "parameters":
        names = obs.trigger_names
        cause = Cause(
            kind="optimizer_update",
            phase="optimizer",
            summary=f"gradients, hyperparameters and weights were finite, but optimizer.step() at step {obs.step} "
            f"wrote NaN/Inf into {', '.join(names[:5])}",
            parameter=names[0] if names else None,
            evidence=obs.optimizer_notes,
        )
        first = FirstNonFinite(obs.step, "parameters", names)
    elif obs.op is not None:
        first = FirstNonFinite(obs.step, obs.trigger, obs.trigger_names)
        found = classify(obs.op, obs.history)
        op = obs.op
        facts = [
            Evidence(
                "origin op",
                f"aten.{op.aten} in {op.phase}"
                + (f" at {op.source}" if op.source else "")
                + f": {op.nan} NaN, {op.inf} Inf in its {op.output_dtype} output",
                {"aten": op.aten, "phase": op.phase, "source": op.source, "module": op.module},
            ),
            *(
                Evidence(
                    f"input {i}",
                    s.text(),
                    {
                        "min": s.min,
                        "max": s.max,
                        "zeros": s.zeros,
                        "negatives": s.negatives,
                        "nonfinite": s.nonfinite,
                    },
                )
                for i, s in enumerate(op.inputs)
            ),
        ]
        if op.then is not None:
            then = op.then
            facts.append(
                Evidence(
                    "surfaced in",
                    f"aten.{then.aten} in {then.phase}"
                    + (f" ({then.module})" if then.module else "")
                    + (f" at {then.source}" if then.source else "")
                    + f" turned it into {then.nan} NaN, {then.inf} Inf"
                    + (
                        ": backward met the value forward had made non-finite and the loss had masked away"
                        if then.phase == "backward"
                        else ""
                    ),
                    {"aten": then.aten, "op": then.op, "phase": then.phase, "module": then.module},
                )
            )
        if op.extreme is not None:
            e = op.extreme
            made = f"aten.{e.op} ({e.phase}" + (f", {e.module}" if e.module else "") + ")" if e.op else e.leaf
            facts.append(
                Evidence(
                    "provenance",
                    f"the largest input of aten.{op.aten} ({max(s.magnitude for s in op.inputs):.3g}) came from "
                    f"{made}"
                    + (
                        f", which took inputs of at most {e.input_max:.3g} to {e.output_max:.3g}"
                        if e.op
                        else ""
                    ),
                    {
                        "op": e.op,
                        "module": e.module,
                        "phase": e.phase,
                        "source": e.source,
                        "leaf": e.leaf,
                        "input_max": e.input_max,
                        "output_max": e.output_max,
                    },
                )
            )
        if obs.counterfactual is not None:
            facts.append(obs.counterfactual)
        if obs.last_good_fails is not None:
            facts.append(
                Evidence(
                    "last good batch",
                    "the same weights on the last good batch fail in the same op too: the weights, not this "
                    "batch, are the cause"
                    if obs.last_good_fails
                    else "the same weights on the last good batch are finite: this batch explains the failure",
                    {"fails": obs.last_good_fails},
                )
            )
        if op.rows is not None:
            whole = obs.op_whole_batch
            facts.append(
                Evidence(
                    "rows",
                    "every row of the batch (a property of the whole batch, not of single samples)"
                    if whole
                    else f"batch rows {list(op.rows[:20])}",
                    {"rows": list(op.rows)},
                )
            )
        elif obs.batches_tracked and obs.counterfactual is None:
            facts.append(
                Evidence(
                    "rows",
                    "the op's output has no batch dimension (a reduction over the batch, or statistics such as "
                    "per-class counts), so no single sample is to blame",
                )
            )
        if growth is not None:
            facts.append(growth)
        if found.kind == "gradient_explosion" and obs.layer_growth:
            facts.append(_layers(obs.layer_growth))
        samples = obs.op_samples
        cf = obs.counterfactual
        if cf is not None and found.kind in ("overflow", "gradient_explosion") and cf.data.get("every"):
            samples = None  # every sample fails on its own on these weights: the weights, not the data
        cause = Cause(
            kind=found.kind,
            phase=found.phase or op.phase,  # type: ignore[arg-type]
            summary=found.summary,
            module=found.module,
            op=found.op,
            samples=samples,
            evidence=tuple(facts) + touched,
        )
        explode = found.kind in ("gradient_explosion", "overflow")
        clip = (f"Clip gradients: {clip_hint(obs.history, obs.script_clip)}.",) if explode else ()
        return Diagnosis(first=first, cause=cause, suggestions=found.suggestions + clip)
    else:
        evidence: list[Evidence] = []
        if obs.batches_tracked:
            evidence.append(Evidence("inputs", "every tensor of this iteration's batch is finite"))
        evidence.append(Evidence("weights", "every weight and buffer was finite before the step"))
        if obs.trigger == "loss":
            phase: Phase = "loss" if obs.model_output_finite else "forward"
            if obs.model_output_finite is None:
                where_text = "in the forward pass or the loss"
            elif obs.model_output_finite:
                where_text = "in the loss computation (the model's output was finite)"
                evidence.append(Evidence("model output", "every tensor the model returned was finite"))
            else:
                where_text = "inside the model's forward pass (its output is already non-finite)"
                evidence.append(Evidence("model output", "the model returned NaN/Inf"))
            summary = (
                f"the loss became non-finite at step {obs.step} {where_text}, from finite inputs and weights; "
                "the op that produced it was not localized (no replay)"
            )
        else:
            phase = "backward"
            summary = (
                f"the loss was finite at step {obs.step} but backward produced NaN/Inf gradients in "
                f"{', '.join(obs.trigger_names[:5])}; the op that produced them was not localized (no replay)"
            )
        if growth is not None:
            evidence.append(growth)
        evidence.extend(touched)
        kind = "undetermined"
        if obs.replay_finite:
            kind = "not_reproducible"
            what = "loss" if obs.trigger == "loss" else "gradients"
            summary = (
                f"the {what} became non-finite at step {obs.step}, but replaying that step from the same batch, "
                "weights and random state gave finite values in every op: a transient fault (a hardware error "
                "such as a bit flip or a failing GPU, a non-deterministic kernel, or state the script changes "
                "between runs of a step), not a property of the data or the model"
            )
            evidence.append(
                Evidence(
                    "replay", "the replayed iteration created no NaN/Inf in any op", {"reproduced": False}
                )
            )
        elif obs.replay_note:
            evidence.append(Evidence("localization", obs.replay_note))
        cause = Cause(kind=kind, phase=phase, summary=summary, evidence=tuple(evidence))
        first = FirstNonFinite(obs.step, obs.trigger, obs.trigger_names)
    return Diagnosis(
        first=first, cause=cause, suggestions=suggestions_for(cause, obs.history, obs.script_clip)
    )
