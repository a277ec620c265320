"""Caffe files: a reader of the protobuf text format and the two codes the seeds name.

``caffe_lr_policy`` (solver files): an ``lr_policy`` missing a parameter its formula needs, or a formula that
gives a NaN/Inf/negative learning rate at some iteration up to ``max_iter`` (computed as Caffe's
``SGDSolver::GetLearningRate`` does, with C float semantics: ``poly`` without ``max_iter`` divides by 0).
``caffe_pool_stride`` (net files): a Pooling layer whose stride exceeds its kernel (inputs skipped; the seeds
report NaN from it).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from nanscope.errors import UsageError
from nanscope.preflight.report import CheckReport, Finding

__all__ = ["check_file", "parse"]

_TOKEN = re.compile(
    r'\s*(?:#[^\n]*|("(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\')|([{}:\[\],;<>])|([^\s{}:\[\],;<>"\']+))'
)

# policy -> the solver parameters its formula reads (caffe/solvers/sgd_solver.cpp)
NEEDS = {
    "fixed": (),
    "step": ("gamma", "stepsize"),
    "exp": ("gamma",),
    "inv": ("gamma", "power"),
    "multistep": ("gamma", "stepvalue"),
    "poly": ("max_iter", "power"),
    "sigmoid": ("gamma", "stepsize"),
}


def _tokens(text: str) -> list[str]:
    out, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            if text[pos:].strip():
                raise UsageError(f"cannot read the prototxt at character {pos}: {text[pos : pos + 30]!r}")
            break
        pos = m.end()
        token = m.group(1) or m.group(2) or m.group(3)
        if token:
            out.append(token)
    return out


def parse(text: str) -> dict[str, list[Any]]:
    """The protobuf text format as ``{field: [values...]}``; a message is a nested dict, a string keeps no
    quotes, a number stays a string (the schema is not known here)."""
    tokens = _tokens(text)
    pos = 0

    def message(end: str | None) -> dict[str, list[Any]]:
        nonlocal pos
        fields: dict[str, list[Any]] = {}
        while pos < len(tokens):
            name = tokens[pos]
            if name == end:
                pos += 1
                return fields
            if name in "{}<>:[],;":
                if name in ",;":
                    pos += 1
                    continue
                raise UsageError(f"unexpected {name!r} in the prototxt (token {pos})")
            pos += 1
            if pos < len(tokens) and tokens[pos] == ":":
                pos += 1
            if pos >= len(tokens):
                raise UsageError(f"the prototxt ends after the field name {name!r}")
            if tokens[pos] in ("{", "<"):
                close = "}" if tokens[pos] == "{" else ">"
                pos += 1
                fields.setdefault(name, []).append(message(close))
            elif tokens[pos] == "[":
                pos += 1
                while pos < len(tokens) and tokens[pos] != "]":
                    if tokens[pos] != ",":
                        fields.setdefault(name, []).append(_scalar(tokens[pos]))
                    pos += 1
                pos += 1
            else:
                fields.setdefault(name, []).append(_scalar(tokens[pos]))
                pos += 1
        if end is not None:
            raise UsageError(f"the prototxt ends inside a message (a {end!r} is missing)")
        return fields

    return message(None)


def _scalar(token: str) -> str:
    return token[1:-1] if token[:1] in "\"'" else token


def _float(value: Any, default: float = 0.0) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def _div(a: float, b: float) -> float:
    if b == 0:
        return math.nan if a == 0 or math.isnan(a) else math.copysign(math.inf, a)
    return a / b


def _pow(a: float, b: float) -> float:
    try:
        return math.pow(a, b)
    except ValueError:  # a negative base to a non-integer power: C gives NaN
        return math.nan
    except OverflowError:
        return math.inf


def learning_rate(solver: dict[str, list[Any]], it: int) -> float:
    """``SGDSolver::GetLearningRate`` at iteration ``it`` (unset fields read as the proto's defaults: 0)."""
    first = {k: v[0] for k, v in solver.items() if v}
    policy = str(first.get("lr_policy", "fixed"))
    base = _float(first.get("base_lr"))
    gamma, power = _float(first.get("gamma")), _float(first.get("power"))
    stepsize, max_iter = int(_float(first.get("stepsize"))), int(_float(first.get("max_iter")))
    if policy == "fixed":
        return base
    if policy == "step":
        return base * _pow(gamma, math.floor(_div(it, stepsize)) if stepsize else math.inf)
    if policy == "exp":
        return base * _pow(gamma, it)
    if policy == "inv":
        return base * _pow(1 + gamma * it, -power)
    if policy == "multistep":
        current = sum(1 for v in solver.get("stepvalue", []) if it >= _float(v))
        return base * _pow(gamma, current)
    if policy == "poly":
        return base * _pow(1.0 - _div(float(it), float(max_iter)), power)
    if policy == "sigmoid":
        return base * _div(1.0, 1.0 + math.exp(min(-gamma * (it - stepsize), 700.0)))
    raise UsageError(f"unknown lr_policy {policy!r} (Caffe knows {', '.join(NEEDS)})")


def _solver_findings(solver: dict[str, list[Any]], name: str) -> list[Finding]:
    policy = str(solver.get("lr_policy", ["fixed"])[0])
    if policy not in NEEDS:
        return [
            Finding(
                "caffe_lr_policy",
                "error",
                f"{name}: lr_policy",
                f"lr_policy {policy!r} is not one Caffe knows: the solver fails at its first step",
                f"Use one of {', '.join(NEEDS)}.",
            )
        ]
    missing = [p for p in NEEDS[policy] if p not in solver]
    max_iter = int(_float(solver.get("max_iter", [0])[0]))
    horizon = max_iter if max_iter > 0 else 1000
    bad = None
    for it in range(horizon + 1):
        lr = learning_rate(solver, it)
        if not math.isfinite(lr) or lr < 0:
            bad = (it, lr)
            break
    if not missing and bad is None:
        return []
    samples = {it: learning_rate(solver, it) for it in sorted({0, 1, horizon // 2, horizon})}
    shown = ", ".join(f"iteration {it}: {lr:.4g}" for it, lr in samples.items())
    parts = []
    if missing:
        parts.append(
            f"lr_policy {policy!r} needs {', '.join(NEEDS[policy])} but {', '.join(missing)} is not set"
        )
    if bad is not None:
        parts.append(f"the learning rate it produces is {bad[1]} at iteration {bad[0]}")
    return [
        Finding(
            "caffe_lr_policy",
            "error" if bad is not None else "warning",
            f"{name}: lr_policy {policy!r}",
            "; ".join(parts) + f" (learning rate at {shown})",
            f"Set {', '.join(missing or NEEDS[policy])} in the solver (poly: base_lr * (1 - iter/max_iter)^power).",
            evidence={"policy": policy, "missing": missing, "lr": {str(k): v for k, v in samples.items()}},
        )
    ]


def _size(params: dict[str, list[Any]], name: str) -> tuple[int, int] | None:
    """(h, w) of ``kernel`` or ``stride`` from ``*_size``/``*_h``/``*_w`` (``stride`` defaults to 1)."""
    base = "kernel_size" if name == "kernel" else "stride"
    one = params.get(base)
    h, w = params.get(f"{name}_h"), params.get(f"{name}_w")
    if h or w:
        return int(_float((h or one or [1])[0])), int(_float((w or one or [1])[0]))
    if one:
        return int(_float(one[0])), int(_float(one[0]))
    return None if name == "kernel" else (1, 1)


def _net_findings(net: dict[str, list[Any]], name: str) -> list[Finding]:
    found = []
    for layer in net.get("layer", []) + net.get("layers", []):
        if not isinstance(layer, dict):
            continue
        kind = str(layer.get("type", [""])[0])
        if kind not in ("Pooling", "POOLING"):
            continue
        params = (layer.get("pooling_param") or [{}])[0]
        if params.get("global_pooling", ["false"])[0] == "true":
            continue
        kernel, stride = _size(params, "kernel"), _size(params, "stride")
        if kernel is None or stride is None:
            continue
        if stride[0] > kernel[0] or stride[1] > kernel[1]:
            lname = str(layer.get("name", ["?"])[0])
            found.append(
                Finding(
                    "caffe_pool_stride",
                    "error",
                    f"{name}: layer {lname!r}",
                    f"Pooling layer {lname!r} has stride {stride[0]}x{stride[1]} larger than its kernel "
                    f"{kernel[0]}x{kernel[1]}: inputs between the windows are never read (and the output "
                    "size Caffe computes can leave outputs uninitialized, which practitioners report as NaN)",
                    "Make the stride at most the kernel size (stride == kernel for non-overlapping pooling).",
                    evidence={"kernel": list(kernel), "stride": list(stride)},
                )
            )
    return found


def check_file(path: str) -> CheckReport:
    """``nanscope check solver.prototxt`` / ``net.prototxt``: a solver (has ``base_lr`` or ``lr_policy``), a
    net (has layers), or a solver with an inline ``net_param``."""
    file = Path(path)
    try:
        text = file.read_text()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from exc
    data = parse(text)
    findings: list[Finding] = []
    checked: list[str] = []
    is_solver = "base_lr" in data or "lr_policy" in data
    nets = [data] if ("layer" in data or "layers" in data) else []
    nets += [n for n in data.get("net_param", []) if isinstance(n, dict)]
    if not is_solver and not nets:
        raise UsageError(
            f"{path} is neither a Caffe solver (no base_lr/lr_policy) nor a net (no layer): nothing to check"
        )
    if is_solver:
        found = _solver_findings(data, file.name)
        findings += found
        if not found:
            checked.append("caffe_lr_policy")
    for net in nets:
        found = _net_findings(net, file.name)
        findings += found
        if not found:
            checked.append("caffe_pool_stride")
    return CheckReport(
        findings=tuple(findings), checked=tuple(dict.fromkeys(checked)), environment={"file": path}
    )
