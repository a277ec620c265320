"""From the origin op of a non-finite value to a cause kind, a summary and the fixes that fit it.

The rule when an op overflowed but the run's history shows steady growth: the practitioner should act on the
growth (lower the LR, clip), so the kind is ``gradient_explosion`` and the summary names the overflowing op
too. Growth means a least-squares fit of log(grad norm) over the last 50 finite steps that rose at least
100x in total, at more than 5 % a step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from nanscope.localize.trace import OpFinding
from nanscope.report.model import History

__all__ = ["Classified", "classify", "exploding", "growth"]

_LOGS = {"log", "log2", "log10", "log1p", "xlogy", "special_xlog1py"}
_DIVS = {"div", "reciprocal", "true_divide", "floor_divide", "remainder", "fmod"}
_ROOTS = {"sqrt", "rsqrt", "pow"}
_ARCS = {"acos", "asin", "atanh", "acosh"}
_SOFTMAX = {"_softmax", "softmax", "_log_softmax", "log_softmax"}
_REDUCE = {"mean", "var", "std", "var_mean", "std_mean", "nanmean"}
_NORMS = {
    "native_layer_norm",
    "layer_norm",
    "native_batch_norm",
    "_native_batch_norm_legit",
    "_native_batch_norm_legit_no_training",
    "native_group_norm",
    "group_norm",
    "_fused_rms_norm",
    "rms_norm",
    "norm",
    "linalg_vector_norm",
}
# above the square root of the largest finite value, a square overflows
_SQRT_MAX = {"float32": 1.8e19, "float16": 255.9, "bfloat16": 1.8e19, "float64": 1.3e154}
_MATMUL = {
    "mm",
    "bmm",
    "addmm",
    "matmul",
    "baddbmm",
    "addbmm",
    "linear",
    "convolution",
    "_convolution",
    "dot",
}


@dataclass(frozen=True, slots=True)
class Classified:
    kind: str
    summary: str
    suggestions: tuple[str, ...]


def growth(history: History, window: int = 50) -> tuple[float, float, int] | None:
    """``(total factor, per-step factor, steps)`` of the global grad norm over the last finite ``window``
    steps, from a least-squares fit of log(norm) against the step (robust to step-to-step noise)."""
    points = [
        (s, math.log(v))
        for s, v in zip(history.step[-window:], history.grad_norm[-window:], strict=False)
        if v is not None and math.isfinite(v) and v > 0
    ]
    if len(points) < 4:
        return None
    n = len(points)
    mean_s = sum(s for s, _ in points) / n
    mean_l = sum(v for _, v in points) / n
    var = sum((s - mean_s) ** 2 for s, _ in points)
    if var == 0:
        return None
    slope = sum((s - mean_s) * (v - mean_l) for s, v in points) / var
    span = points[-1][0] - points[0][0]
    return math.exp(slope * span), math.exp(slope), span


def exploding(history: History) -> bool:
    """Steady growth: the fitted grad norm rose at least 100x over the window, at more than 5 % a step."""
    grow = growth(history)
    return grow is not None and grow[0] >= 100 and grow[1] > 1.05


def _where(f: OpFinding) -> str:
    place = f" in {f.module}" if f.module else ""
    line = f" ({f.source})" if f.source else ""
    return f"`{f.op}`{place}{line}"


def classify(f: OpFinding, history: History) -> Classified:
    first = f.inputs[0] if f.inputs else None
    second = f.inputs[1] if len(f.inputs) > 1 else None
    inputs_inf = any(s.nonfinite for s in f.inputs)
    where = _where(f)
    grow = growth(history)
    explode = exploding(history)
    big = max((abs(v) for s in f.inputs for v in (s.min, s.max) if v is not None), default=0.0)
    if f.phase == "backward":
        if big > 1e30 or explode:
            kind = "gradient_explosion" if explode else "overflow"
            return Classified(
                kind,
                f"backward of {where} overflowed {f.output_dtype} (inputs up to {big:.3g})",
                ("Clip gradients (torch.nn.utils.clip_grad_norm_) and lower the learning rate.",),
            )
        return Classified(
            "singular_gradient",
            f"the forward of {where} was finite, but its derivative is infinite or undefined at the values it "
            f"saw (e.g. sqrt'(0), acos'(+/-1), a norm or std of a constant input): backward produced "
            f"{f.nan} NaN / {f.inf} Inf",
            (
                f"Add an eps inside {f.op}: e.g. `torch.sqrt(x + 1e-12)` or `(x.var(...) + eps).sqrt()` instead of a "
                "bare sqrt/std/norm, or clamp the argument away from the singular point.",
            ),
        )
    if f.nan and inputs_inf and f.op in _SOFTMAX:
        return Classified(
            "domain_error",
            f"{where} took a softmax over a row that is entirely -inf (every "
            "position masked): the result is 0/0 = NaN",
            (
                "Make sure every row keeps at least one unmasked position, or use a large negative "
                "finite value (torch.finfo(dtype).min) instead of -inf in the mask.",
            ),
        )
    if f.nan and inputs_inf:
        return Classified(
            "domain_error",
            f"{where} combined infinite inputs into NaN (inf - inf, 0 * inf)",
            ("Find where the infinity came from and keep values finite (clamp, or a finite mask value).",),
        )
    if f.op in _LOGS and first is not None and (first.zeros or first.negatives):
        return Classified(
            "domain_error",
            f"{where} got {first.zeros} zeros and {first.negatives} negative values: log(0) = -inf"
            + (", log(<0) = NaN" if first.negatives else ""),
            (
                "Use log_softmax / logsumexp instead of log(softmax(x)), BCEWithLogitsLoss instead of sigmoid + "
                "BCELoss, or clamp before the log: `torch.log(p.clamp_min(1e-12))`.",
            ),
        )
    if f.op in _DIVS and second is not None and second.zeros:
        return Classified(
            "domain_error",
            f"{where} divided by zero ({second.zeros} zero denominators"
            + (f", {first.zeros} zero numerators: 0/0 = NaN" if first is not None and first.zeros else "")
            + ")",
            (
                "Add an eps to the denominator: `x / (norm + 1e-8)`, or `torch.nn.functional.normalize`; for "
                "weights from label frequencies, skip classes absent from the batch or use a larger batch.",
            ),
        )
    if f.op in _ROOTS and first is not None and first.negatives and f.nan:
        return Classified(
            "domain_error",
            f"{where} got {first.negatives} negative values: sqrt/pow of a negative number is NaN",
            ("Clamp the argument: `x.clamp_min(0)` (plus an eps) before sqrt/pow.",),
        )
    if f.op in _ARCS:
        return Classified(
            "domain_error",
            f"{where} got values outside its domain ([-1, 1] for acos/asin)",
            ("Clamp to the domain first: `x.clamp(-1 + 1e-7, 1 - 1e-7)`.",),
        )
    if f.op in _REDUCE and first is not None and math.prod(first.shape) == 0:
        return Classified(
            "domain_error",
            f"{where} reduced over zero elements (e.g. a mean over a fully ignored target set): 0/0 = NaN",
            ("Guard the reduction: skip it or return 0 when nothing is selected.",),
        )
    if f.op.startswith("nll_loss") and f.nan and not f.inf:
        return Classified(
            "domain_error",
            f"{where} averaged over zero targets (every target of the batch is the "
            "ignore_index, or all weights are 0): 0/0 = NaN",
            (
                "Skip the loss (or use reduction='sum' / a guarded mean) when no target counts; "
                "check the masking that produced an all-ignored batch.",
            ),
        )
    if (f.op in _REDUCE or f.op in _NORMS) and big > _SQRT_MAX.get(f.output_dtype, math.inf):
        return Classified(
            "overflow",
            f"{where} computed statistics (squares, variances) of values up to {big:.3g}: their squares overflow "
            f"{f.output_dtype}, and the normalization turned inf/inf into NaN — the values were already out of "
            "range, not a 0/0",
            (
                "Find what made the activations this large (a learning rate too high, an unnormalized input, "
                "a residual stream without normalization) and fix that; an eps cannot help here.",
            ),
        )
    if f.nan and not f.inf and f.op not in _MATMUL:
        return Classified(
            "domain_error",
            f"{where} produced NaN from finite inputs (an undefined value such as 0/0)",
            ("Guard the operation's arguments (eps in denominators, clamp before log/sqrt).",),
        )
    if f.inf or f.nan:
        text = f"{where} overflowed {f.output_dtype} from finite inputs ({f.inf} Inf, {f.nan} NaN)"
        if explode and grow is not None:
            text += (
                f"; before it the grad norm grew x{grow[0]:.3g} over {grow[2]} steps (x{grow[1]:.3g} per "
                "step): the run was diverging"
            )
            return Classified(
                "gradient_explosion",
                text,
                (
                    f"Lower the learning rate (at least by the per-step growth, x{grow[1]:.3g}; usually 10x) or add "
                    "warm-up, and clip gradients (torch.nn.utils.clip_grad_norm_).",
                    "Normalize the inputs and targets: unscaled data makes the stable learning rate tiny.",
                ),
            )
        fixes = []
        if f.op in ("exp", "_softmax", "softmax", "logsumexp", "pow"):
            fixes.append(
                "Compute it in a stable form: subtract the max before exp (torch.softmax, "
                "torch.logsumexp) or keep the values in range."
            )
        else:
            fixes.append(
                f"Keep the inputs of `{f.op}` in range: normalize the data, scale the weights' "
                "initialization, or compute it in float32/float64."
            )
        if f.output_dtype in ("float16",):
            fixes.insert(
                0,
                "float16 tops out at 65504: train in bfloat16, or keep this op in float32 "
                "(autocast does for softmax/exp-like ops), with torch.amp.GradScaler for the loss.",
            )
        return Classified("overflow", text, tuple(fixes))
    return Classified("domain_error", f"{where} produced non-finite values from finite inputs", ())
