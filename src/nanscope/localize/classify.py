"""From the origin op of a non-finite value to a cause kind, a summary and the fixes that fit it.

The op-semantics table (:data:`RULES`) is read top to bottom; the first rule whose condition holds on the
origin op and the statistics of its inputs decides. Each rule names what it recognizes, the kind it gives and
the fix. Two rules look beyond the op:

* provenance: when an op overflowed because an input was already extreme (see
  :func:`nanscope.localize.trace.extreme_level`), the op that took the values out of a normal range is the
  origin (``exp`` as an output link, a ``pow``), and the op that overflowed is kept in the summary;
* growth: when an op overflowed but the run's history shows steady growth, the practitioner should act on the
  growth (lower the LR, clip), so the kind is ``gradient_explosion`` and the summary names the overflowing op
  too. Growth means a least-squares fit of log(grad norm) over the last 50 finite steps that rose at least
  100x in total, at more than 5 % a step.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass

from nanscope.localize.trace import OpFinding, TensorStats
from nanscope.report.model import History

__all__ = ["RULES", "Classified", "classify", "exploding", "grad_jump", "growth"]

_LOGS = {"log", "log2", "log10", "log1p", "xlogy", "special_xlog1py"}
_DIVS = {"div", "true_divide", "floor_divide", "remainder", "fmod"}
_ROOTS = {"sqrt", "rsqrt", "pow"}
_ARCS = {"acos", "asin", "atanh", "acosh"}
_SOFTMAX = {"_softmax", "softmax", "_log_softmax", "log_softmax", "_safe_softmax"}
_CTC = {"_ctc_loss", "ctc_loss"}
_REDUCE = {"mean", "var", "std", "var_mean", "std_mean", "nanmean", "sum"}
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
_FLOAT16 = (
    "float16 tops out at 65504: train in bfloat16, or keep this op in float32 (autocast does for "
    "softmax/exp-like ops), with torch.amp.GradScaler for the loss."
)
_LARGEST = {"float32": 3.4e38, "float16": 65504.0, "bfloat16": 3.39e38, "float64": 1.8e308}
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
    # the op the cause names: the finding's own, or (provenance) the op that made its inputs extreme
    op: str | None = None
    module: str | None = None
    phase: str | None = None


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
    try:
        slope, _ = statistics.linear_regression([s for s, _ in points], [v for _, v in points])
    except statistics.StatisticsError:  # every point at one step
        return None
    span = points[-1][0] - points[0][0]
    return math.exp(slope * span), math.exp(slope), span


def exploding(history: History) -> bool:
    """Steady growth: the fitted grad norm rose at least 100x over the window, at more than 5 % a step; or a
    sudden exploding gradient (:func:`grad_jump`)."""
    grow = growth(history)
    return (grow is not None and grow[0] >= 100 and grow[1] > 1.05) or grad_jump(history) is not None


def grad_jump(history: History, within: int = 3, factor: float = 100.0) -> tuple[int, float, float] | None:
    """A sudden exploding gradient just before the failure (an RNN's, typically): one of the last ``within``
    finite grad norms at least ``factor`` times the median of the (up to) 20 finite ones before it, so the
    update it drove blew the weights up. ``(step, that median, the norm)``."""
    points = [
        (s, v)
        for s, v in zip(history.step, history.grad_norm, strict=False)
        if v is not None and math.isfinite(v)
    ]
    for i in range(max(len(points) - within, 5), len(points)):
        level = statistics.median(v for _, v in points[max(0, i - 20) : i])
        if level > 0 and points[i][1] >= factor * level:
            return points[i][0], level, points[i][1]
    return None


def _jump_text(history: History) -> str:
    jump = grad_jump(history)
    if jump is None:
        return ""
    step, level, value = jump
    return (
        f"; at step {step} the grad norm jumped to {value:.3g} from a running level of {level:.3g} "
        f"(x{value / level:.3g}): an exploding gradient, whose update blew the weights up"
    )


@dataclass(frozen=True, slots=True)
class Case:
    """An origin op with what the rules read: its inputs, their largest magnitude, the run's growth."""

    f: OpFinding
    history: History

    @property
    def first(self) -> TensorStats | None:
        return self.f.inputs[0] if self.f.inputs else None

    @property
    def second(self) -> TensorStats | None:
        return self.f.inputs[1] if len(self.f.inputs) > 1 else None

    @property
    def inputs_nonfinite(self) -> bool:
        return any(s.nonfinite for s in self.f.inputs)

    @property
    def big(self) -> float:
        return max((s.magnitude for s in self.f.inputs), default=0.0)

    @property
    def where(self) -> str:
        return _where(self.f.op, self.f.module, self.f.source)

    @property
    def explode(self) -> bool:
        return exploding(self.history)


def _where(op: str, module: str | None, source: str | None) -> str:
    place = f" in {module}" if module else ""
    line = f" ({source})" if source else ""
    return f"`{op}`{place}{line}"


Rule = Callable[[Case], Classified | None]


def _backward(c: Case) -> Classified | None:
    f = c.f
    if f.phase != "backward":
        return None
    if c.big > 1e30 or c.explode:
        kind = "gradient_explosion" if c.explode else "overflow"
        return Classified(
            kind,
            f"backward of {c.where} overflowed {f.output_dtype} (inputs up to {c.big:.3g})",
            ("Clip gradients (torch.nn.utils.clip_grad_norm_) and lower the learning rate.",),
        )
    return Classified(
        "singular_gradient",
        f"the forward of {c.where} was finite, but its derivative is infinite or undefined at the values it "
        f"saw (e.g. sqrt'(0), acos'(+/-1), a norm or std of a constant input): backward produced "
        f"{f.nan} NaN / {f.inf} Inf",
        (
            f"Add an eps inside {f.op}: e.g. `torch.sqrt(x + 1e-12)` or `(x.var(...) + eps).sqrt()` instead of a "
            "bare sqrt/std/norm, or clamp the argument away from the singular point.",
        ),
    )


def _ctc(c: Case) -> Classified | None:
    if c.f.op not in _CTC or not c.f.inf:
        return None
    return Classified(
        "domain_error",
        f"{c.where} found no feasible alignment for {c.f.inf} sample(s): a target longer than its input "
        "(plus one blank between repeated labels) has probability 0, and the loss is -log(0) = inf",
        (
            "Drop or truncate samples whose target is longer than the model's output sequence (check the "
            "input_lengths after downsampling), or pass zero_infinity=True to nn.CTCLoss / F.ctc_loss.",
        ),
    )


def _softmax_all_masked(c: Case) -> Classified | None:
    if not (c.f.nan and c.inputs_nonfinite and c.f.op in _SOFTMAX):
        return None
    return Classified(
        "domain_error",
        f"{c.where} took a softmax over a row that is entirely -inf (every position masked): the result is "
        "0/0 = NaN",
        (
            "Make sure every row keeps at least one unmasked position, or use a large negative finite value "
            "(torch.finfo(dtype).min) instead of -inf in the mask.",
        ),
    )


def _log(c: Case) -> Classified | None:
    first = c.first
    if c.f.op not in _LOGS or first is None or not (first.zeros or first.negatives):
        return None
    return Classified(
        "domain_error",
        f"{c.where} got {first.zeros} zeros and {first.negatives} negative values: log(0) = -inf"
        + (", log(<0) = NaN" if first.negatives else ""),
        (
            "Use log_softmax / logsumexp instead of log(softmax(x)), BCEWithLogitsLoss instead of sigmoid + "
            "BCELoss, or clamp before the log: `torch.log(p.clamp_min(1e-12))`.",
        ),
    )


def _division(c: Case) -> Classified | None:
    f, first, second = c.f, c.first, c.second
    denominator = first if f.op == "reciprocal" else second if f.op in _DIVS else None
    if denominator is None or not denominator.zeros:
        return None
    numerators = (
        f", {first.zeros} zero numerators: 0/0 = NaN" if f.op in _DIVS and first and first.zeros else ""
    )
    return Classified(
        "domain_error",
        f"{c.where} divided by zero ({denominator.zeros} zero denominators{numerators})",
        (
            "Add an eps to the denominator: `x / (norm + 1e-8)`, or `torch.nn.functional.normalize`; for "
            "weights from label frequencies, skip classes absent from the batch or use a larger batch.",
        ),
    )


def _root(c: Case) -> Classified | None:
    first = c.first
    if c.f.op not in _ROOTS or first is None or not first.negatives or not c.f.nan:
        return None
    return Classified(
        "domain_error",
        f"{c.where} got {first.negatives} negative values: sqrt/pow of a negative number is NaN",
        ("Clamp the argument: `x.clamp_min(0)` (plus an eps) before sqrt/pow.",),
    )


def _arc(c: Case) -> Classified | None:
    if c.f.op not in _ARCS:
        return None
    return Classified(
        "domain_error",
        f"{c.where} got values outside its domain ([-1, 1] for acos/asin)",
        ("Clamp to the domain first: `x.clamp(-1 + 1e-7, 1 - 1e-7)`.",),
    )


def _empty_reduction(c: Case) -> Classified | None:
    first = c.first
    if c.f.op not in _REDUCE or first is None or math.prod(first.shape) != 0:
        return None
    return Classified(
        "domain_error",
        f"{c.where} reduced over zero elements (e.g. a mean over a fully ignored target set): 0/0 = NaN",
        ("Guard the reduction: skip it or return 0 when nothing is selected.",),
    )


def _all_ignored(c: Case) -> Classified | None:
    if not (c.f.op.startswith("nll_loss") and c.f.nan and not c.f.inf):
        return None
    return Classified(
        "domain_error",
        f"{c.where} averaged over zero targets (every target of the batch is the ignore_index, or all weights "
        "are 0): 0/0 = NaN",
        (
            "Skip the loss (or use reduction='sum' / a guarded mean) when no target counts; check the masking "
            "that produced an all-ignored batch.",
        ),
    )


def _provenance(c: Case) -> Classified | None:
    """An overflow of inputs that an earlier op (or a leaf) had already made extreme."""
    f, e = c.f, c.f.extreme
    if e is None or c.inputs_nonfinite:
        return None
    surfaced = f"{c.where} then overflowed {f.output_dtype} ({f.inf} Inf, {f.nan} NaN)"
    if e.op is None:  # a leaf: the weights or the data were already extreme
        if c.explode:
            return None  # the growth rule below names the divergence
        what = f"the parameter {e.leaf}" if e.leaf and e.leaf != "an input of the iteration" else e.leaf
        return Classified(
            "overflow",
            f"{what} already held values up to {e.output_max:.3g}; {surfaced}",
            (
                "Normalize the inputs (and targets) before training."
                if e.leaf == "an input of the iteration"
                else "The weights were already huge: lower the learning rate, clip gradients, and check the "
                "initialization or the checkpoint they came from.",
            ),
        )
    origin = _where(e.op, e.module, e.source)
    if e.op in ("exp", "exp2", "expm1", "pow", "cosh", "sinh"):
        fix = (
            f"{origin} makes values astronomically large (exp of {e.input_max:.3g} is {e.output_max:.3g}): as "
            "an output link, predict in log space (a loss on log-targets, PoissonNLLLoss(log_input=True)), "
            "use softplus, or clamp its input, e.g. `x.clamp(max=20).exp()`."
        )
    else:
        fix = (
            f"Keep the output of {origin} in range: normalize what goes into it, lower the learning rate, or "
            "add a normalization layer after it."
        )
    return Classified(
        "gradient_explosion" if c.explode else "overflow",
        f"{origin} took values of at most {e.input_max:.3g} to {e.output_max:.3g}; {surfaced}"
        + (_jump_text(c.history) if c.explode else ""),
        (_FLOAT16, fix) if f.output_dtype == "float16" else (fix,),
        op=e.op,
        module=e.module,
        phase=e.phase,
    )


def _statistics_overflow(c: Case) -> Classified | None:
    first = c.first
    if not (c.f.op in _REDUCE or c.f.op in _NORMS) or first is None:
        return None
    elements = max(1, math.prod(first.shape))
    if c.big <= math.sqrt(_LARGEST.get(c.f.output_dtype, math.inf) / elements):
        return None
    return Classified(
        "overflow",
        f"{c.where} computed statistics (squares, variances) of values up to {c.big:.3g}: their squares overflow "
        f"{c.f.output_dtype}, and the normalization turned inf/inf into NaN — the values were already out of "
        "range, not a 0/0",
        (
            "Find what made the activations this large (a learning rate too high, an unnormalized input, "
            "a residual stream without normalization) and fix that; an eps cannot help here.",
        ),
    )


def _derived_nan(c: Case) -> Classified | None:
    if not (c.f.nan and c.inputs_nonfinite):
        return None
    return Classified(
        "domain_error",
        f"{c.where} combined infinite inputs into NaN (inf - inf, 0 * inf)",
        ("Find where the infinity came from and keep values finite (clamp, or a finite mask value).",),
    )


def _undefined(c: Case) -> Classified | None:
    if not (c.f.nan and not c.f.inf and c.f.op not in _MATMUL):
        return None
    return Classified(
        "domain_error",
        f"{c.where} produced NaN from finite inputs (an undefined value such as 0/0)",
        ("Guard the operation's arguments (eps in denominators, clamp before log/sqrt).",),
    )


def _overflow(c: Case) -> Classified | None:
    f = c.f
    if not (f.inf or f.nan):
        return None
    text = f"{c.where} overflowed {f.output_dtype} from finite inputs ({f.inf} Inf, {f.nan} NaN)"
    grow = growth(c.history)
    jump = _jump_text(c.history)
    if c.explode and jump:
        return Classified(
            "gradient_explosion",
            text + jump,
            (
                "Clip gradients (torch.nn.utils.clip_grad_norm_): one exploding gradient is enough to ruin the "
                "weights (the RNN case); lower the learning rate if it recurs.",
            ),
        )
    if c.explode and grow is not None:
        text += (
            f"; before it the grad norm grew x{grow[0]:.3g} over {grow[2]} steps (x{grow[1]:.3g} per step): "
            "the run was diverging"
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
            "Compute it in a stable form: subtract the max before exp (torch.softmax, torch.logsumexp) or keep "
            "the values in range."
        )
    else:
        fixes.append(
            f"Keep the inputs of `{f.op}` in range: normalize the data, scale the weights' initialization, or "
            "compute it in float32/float64."
        )
    if f.output_dtype == "float16":
        fixes.insert(0, _FLOAT16)
    return Classified("overflow", text, tuple(fixes))


# the op-semantics table, in the order the rules are tried (docs/how-it-works.md lists it)
RULES: tuple[tuple[str, Rule], ...] = (
    ("backward: overflow of huge values, else a singular derivative (sqrt'(0), acos'(1))", _backward),
    ("ctc_loss: no feasible alignment (target longer than input) -> inf", _ctc),
    ("softmax over a row that is entirely -inf -> NaN", _softmax_all_masked),
    ("log of zeros or negatives", _log),
    ("division by zero (div, reciprocal)", _division),
    ("sqrt/pow of negatives", _root),
    ("acos/asin/atanh outside their domain", _arc),
    ("a reduction over zero elements", _empty_reduction),
    ("nll_loss/cross_entropy with every target ignored (0/0)", _all_ignored),
    ("provenance: an op overflowed values an earlier op made extreme", _provenance),
    ("statistics (norms, variances) of huge values overflow", _statistics_overflow),
    ("NaN combined from infinities (inf - inf, 0 * inf)", _derived_nan),
    ("NaN from finite inputs (0/0)", _undefined),
    ("overflow from finite inputs (float16 range, growth -> gradient_explosion)", _overflow),
)


def classify(f: OpFinding, history: History) -> Classified:
    case = Case(f, history)
    for _, rule in RULES:
        found = rule(case)
        if found is not None:
            return Classified(
                found.kind,
                found.summary,
                found.suggestions,
                found.op or f.op,
                found.module if found.op else f.module,
                found.phase or f.phase,
            )
    return Classified(
        "domain_error",
        f"{case.where} produced non-finite values from finite inputs",
        (),
        f.op,
        f.module,
        f.phase,
    )
