"""The model-side codes, pure functions of what :mod:`nanscope.preflight.recorder` measured (thresholds here).

``dead_relu``: a ReLU (module or functional) with at least half of its units (>= 8) zero for every row of the
first batch (>= 16 rows). ``saturated_activations``: a sigmoid/tanh with at least half of its outputs within
1 % of its bounds. ``init_scale``: the RMS of the last parameterized layer's output is over 1000x or under
1/1000 of the first's at initialization. ``vanishing_gradients`` / ``exploding_gradients``: the gradient RMS of
the first layer's weight is under 1e-4x / over 1e4x the last layer's; exploding also when the first update
changes a weight by more than its own norm. ``initial_loss``: a cross-entropy's first value above 3 log(C).
``cannot_overfit_batch``: trained on one batch with a reference optimizer (:data:`OVERFIT_LR`, Adam), the loss
keeps over :data:`OVERFIT_KEEPS` of its first value and has stopped falling (less than :data:`STALL` of it over
the last third of the steps; a loss still falling steadily is not a bug's plateau: not checked, more steps).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from nanscope.preflight.recorder import Activation, Iteration
from nanscope.preflight.report import Finding

__all__ = ["OVERFIT_KEEPS", "OVERFIT_LR", "Overfit", "iteration_findings", "overfit_findings"]

DEAD_SHARE = 0.5
SATURATED_SHARE = 0.5
SCALE_RATIO = 1e3
GRAD_RATIO = 1e4
UPDATE_RATIO = 1.0
OVERFIT_LR = 1e-2  # Adam's; 20 steps of it take healthy models of five kinds to <= 0.4 of their first loss
OVERFIT_KEEPS = 0.5
STALL = 0.025  # a fall over the last third of the steps below 2.5 % of the loss: it has stopped falling


def iteration_findings(it: Iteration) -> tuple[list[Finding], list[str]]:
    """``(findings, codes checked and passed)`` of one recorded iteration."""
    findings: list[Finding] = []
    checked: list[str] = []

    def run(code: str, found: list[Finding], applicable: bool = True) -> None:
        findings.extend(found)
        if applicable and not found:
            checked.append(code)

    if it.loss is not None:
        findings.extend(it.loss.findings)
        checked.extend(it.loss.checked)
        if it.loss.classes is not None and it.loss.classes > 1 and it.loss.cross_entropy is not None:
            run("initial_loss", _initial_loss(it.loss.cross_entropy, it.loss.classes))
    relus = [a for a in it.activations if a.op == "relu"]
    run("dead_relu", _dead_relu(relus), bool(relus))
    bounded = [a for a in it.activations if a.op != "relu"]
    run("saturated_activations", _saturated(bounded), bool(bounded))
    run("init_scale", _init_scale(it.layer_rms), len(it.layer_rms) >= 2)
    vanishing, exploding = _gradients(it.grad_rms, it.update_ratio)
    measured = len([r for _, r in it.grad_rms if r > 0]) >= 2
    run("vanishing_gradients", vanishing, measured)
    run("exploding_gradients", exploding, measured or bool(it.update_ratio))
    return findings, checked


def _initial_loss(loss: float, classes: int) -> list[Finding]:
    expected = math.log(classes)
    if math.isfinite(loss) and loss <= 3 * expected:
        return []
    return [
        Finding(
            "initial_loss",
            "warning",
            "the first batch's cross-entropy",
            f"the first batch's cross-entropy is {loss:.4g}, against log({classes}) = {expected:.3g} for uniform "
            "guessing: the initial logits are far too large (initialization scale, unnormalized inputs, or a "
            "final layer that amplifies)",
            "Initialize the last layer small (e.g. its weight times 0.01, bias 0), normalize the inputs, and "
            "check that the loss takes logits (not probabilities).",
            evidence={"loss": loss, "log_classes": expected},
        )
    ]


def _dead_relu(relus: Sequence[Activation]) -> list[Finding]:
    dead = [a for a in relus if a.units >= 8 and a.rows >= 16 and a.share >= DEAD_SHARE]
    if not dead:
        return []
    worst = max(dead, key=lambda a: a.share)
    return [
        Finding(
            "dead_relu",
            "warning",
            f"ReLU in {worst.module}",
            f"{worst.share:.0%} of its {worst.units} units output 0 for every one of the first batch's "
            f"{worst.rows} rows at initialization ({len(dead)} ReLU call(s) at or above {DEAD_SHARE:.0%}): dead "
            "units get no gradient and never recover",
            "Check the inputs' scale and sign (normalize them), the biases' initialization (not large and "
            "negative), and the learning rate; LeakyReLU/GELU have no dead zone.",
            evidence={
                "layers": [{"module": a.module, "dead_share": a.share, "units": a.units} for a in dead][:20]
            },
        )
    ]


def _saturated(acts: Sequence[Activation]) -> list[Finding]:
    sat = [a for a in acts if a.share >= SATURATED_SHARE]
    if not sat:
        return []
    worst = max(sat, key=lambda a: a.share)
    return [
        Finding(
            "saturated_activations",
            "warning",
            f"{worst.op} in {worst.module}",
            f"{worst.share:.0%} of its outputs lie within 1% of the {worst.op}'s bounds at initialization "
            f"({len(sat)} call(s) at or above {SATURATED_SHARE:.0%}): their gradient is ~0, so the layers before "
            "it learn nothing",
            "Normalize the inputs, initialize the layer before it smaller (Xavier for tanh/sigmoid), or add a "
            "normalization layer before the activation.",
            evidence={
                "layers": [{"module": a.module, "op": a.op, "saturated_share": a.share} for a in sat][:20]
            },
        )
    ]


def _init_scale(rms: Sequence[tuple[str, float]]) -> list[Finding]:
    if len(rms) < 2:
        return []
    (first, a), (last, b) = rms[0], rms[-1]
    if a > 0 and math.isfinite(a) and math.isfinite(b) and 1 / SCALE_RATIO <= b / a <= SCALE_RATIO:
        return []
    ratio = b / a if a > 0 else math.inf
    way = "grows" if not ratio < 1 else "shrinks"
    return [
        Finding(
            "init_scale",
            "warning",
            f"{first} -> {last}",
            f"at initialization the activations' RMS {way} from {a:.3g} ({first}) to {b:.3g} ({last}) across "
            f"{len(rms)} layers, a factor of {ratio:.3g}: the signal {'explodes' if way == 'grows' else 'dies out'} "
            "with depth",
            "Use an initialization that keeps the scale (Kaiming for ReLU, Xavier for tanh), or normalization "
            "layers / residual connections between the layers.",
            evidence={"layers": [{"module": n, "rms": r} for n, r in rms][:50], "ratio": ratio},
        )
    ]


def _gradients(
    grads: Sequence[tuple[str, float]], updates: Sequence[tuple[str, float]]
) -> tuple[list[Finding], list[Finding]]:
    vanishing: list[Finding] = []
    exploding: list[Finding] = []
    nonzero = [(n, r) for n, r in grads if r > 0 and math.isfinite(r)]
    if len(nonzero) >= 2:
        (first, a), (last, b) = nonzero[0], nonzero[-1]
        ratio = a / b
        evidence = {"weights": [{"name": n, "grad_rms": r} for n, r in grads][:50], "ratio": ratio}
        if ratio < 1 / GRAD_RATIO:
            vanishing.append(
                Finding(
                    "vanishing_gradients",
                    "warning",
                    f"{first} (first layer)",
                    f"the first layer's weight gets a gradient {ratio:.3g}x the last layer's, {last} ({a:.3g} against "
                    f"{b:.3g}, RMS at initialization): the early layers will barely learn",
                    "Use ReLU-family activations instead of sigmoid/tanh in deep stacks, Kaiming/Xavier "
                    "initialization, normalization layers, or residual connections.",
                    evidence=evidence,
                )
            )
        elif ratio > GRAD_RATIO:
            exploding.append(
                Finding(
                    "exploding_gradients",
                    "warning",
                    f"{first} (first layer)",
                    f"the first layer's weight gets a gradient {ratio:.3g}x the last layer's, {last} ({a:.3g} against "
                    f"{b:.3g}, RMS at initialization): the gradient grows layer by layer towards the input",
                    "Lower the initialization scale, add normalization layers, and clip the gradient norm.",
                    evidence=evidence,
                )
            )
    big = [(n, r) for n, r in updates if not r <= UPDATE_RATIO]
    if big and not exploding:
        name, r = max(big, key=lambda x: x[1] if math.isfinite(x[1]) else math.inf)
        exploding.append(
            Finding(
                "exploding_gradients",
                "warning",
                name,
                f"the first optimizer step changed {name} by {r:.3g}x its own norm ({len(big)} weight(s) by more "
                "than 1x): the update is as large as the weights (a learning rate too high for these gradients)",
                "Lower the learning rate (healthy first updates change a weight by ~1e-3 of its norm), warm it "
                "up, or clip the gradient norm.",
                evidence={"update_ratios": [{"name": n, "ratio": x} for n, x in updates][:50]},
            )
        )
    return vanishing, exploding


@dataclass(frozen=True, slots=True)
class Overfit:
    """Losses of one batch trained on repeatedly by the reference optimizer (the first: before any update)."""

    losses: tuple[float, ...]
    lr: float = OVERFIT_LR
    where: str = "the model"


def overfit_findings(result: Overfit, steps: int) -> tuple[list[Finding], str | None]:
    """``(findings, why not checked)`` after ``steps`` were asked for: a run cut short (the script ended) or
    one that diverged under the reference optimizer tells nothing."""
    losses = result.losses
    if len(losses) - 1 < steps:
        return [], (
            f"the script ended after {max(len(losses) - 1, 0)} of the {steps} one-batch steps (give it more "
            "epochs or data, or lower --steps)"
        )
    first, last = losses[0], min(losses[-3:])
    if not all(math.isfinite(v) for v in losses) or not first > 0:
        return [], "the loss on the repeated batch was not finite and positive"
    if last > 1.5 * first:
        return [], f"the reference optimizer (Adam, lr {result.lr:g}) diverged on this model"
    if last <= OVERFIT_KEEPS * first:
        return [], None
    third = losses[-(len(losses) // 3 + 1)]
    if third - last >= STALL * last:  # slow, but still falling steadily: not the plateau of a bug
        return [], (
            f"the loss fell only to {last / first:.0%} of its start in {len(losses) - 1} steps but was still "
            f"falling ({third:.4g} -> {last:.4g} over the last third): more steps (--steps) would tell"
        )
    return [
        Finding(
            "cannot_overfit_batch",
            "error",
            result.where,
            f"trained on one batch for {len(losses) - 1} steps with Adam (lr {result.lr:g}), the loss went from "
            f"{first:.4g} to {last:.4g} ({last / first:.0%} of its start; a healthy model falls below "
            f"{OVERFIT_KEEPS:.0%} in as many steps) and stopped falling: the model cannot fit even one batch, so the "
            "bug is in the "
            "model, the loss or the data path, not in the hyperparameters",
            "Check that the inputs reach the model unchanged (not all zeros, not detached), that the output and "
            "target shapes match the loss (no broadcasting of (N,1) against (N,)), that every layer is "
            "registered (nn.ModuleList, not a Python list) and that nothing detaches the graph.",
            evidence={"losses": list(losses), "lr": result.lr},
        )
    ], None
