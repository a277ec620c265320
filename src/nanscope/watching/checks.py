"""The always-on checks: loss, gradients, weights and buffers, one fused probe each, read without a sync.

Every device value goes through :class:`~nanscope.watching.reader.DeviceReader`; a check that finds a
non-finite value confirms it exactly (only the suspect tensors are scanned) and reports a :class:`Trip` to
one callback. ``on_read(iteration)`` is called after every delivered value so the engine can settle an
iteration once all of its values are in.
"""

from __future__ import annotations

import functools
import math
import operator
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any

import torch

from nanscope._tree import iter_tensors
from nanscope.detect.scan import BadHyperparameter, nonfinite_hyperparameters, nonfinite_names
from nanscope.report.model import Where
from nanscope.watching import proof
from nanscope.watching.discovery import Naming
from nanscope.watching.probes import Prober, Reading
from nanscope.watching.reader import DeviceReader
from nanscope.watching.state import Iteration, WatchedOptimizer

__all__ = ["LayerNorms", "StepChecks", "Trip"]

_LAYER_WINDOW = 32
_GRAD, _VECTOR, _SECOND = operator.attrgetter("grad"), operator.attrgetter("vector"), operator.itemgetter(1)

#: One gradient read: the parameters, their probe layout and the values read.
LayerNorms = tuple[list[torch.Tensor], list[Reading], list[list[float]]]


@dataclass(frozen=True, slots=True)
class Trip:
    """A check found a non-finite value."""

    where: Where
    names: tuple[str, ...]
    watched: WatchedOptimizer | None = None
    hyperparameters: tuple[BadHyperparameter, ...] | None = None


class StepChecks:
    def __init__(
        self,
        reader: DeviceReader,
        naming: Naming,
        on_trip: Callable[[Iteration, Trip], None],
        on_read: Callable[[Iteration], None],
    ) -> None:
        self.reader = reader
        self._naming = naming
        self._on_trip = on_trip
        self._on_read = on_read
        self._prober = Prober()
        self._buffers: list[tuple[str, torch.Tensor]] | None = None
        #: per-tensor grad norms of the last reads (references only): which layers grew fastest
        self.layer_norms: deque[LayerNorms] = deque(maxlen=_LAYER_WINDOW)

    @property
    def sharded(self) -> bool:
        """The gradients are read as local shards (FSDP2 DTensors): their norms are this rank's part."""
        return self._prober.sharded

    def models_changed(self) -> None:
        self._buffers = None

    # ------------------------------------------------------------------ loss
    def loss(self, it: Iteration, tensors: Any) -> None:
        self.reader.poll()
        items = [tensors] if isinstance(tensors, torch.Tensor) else list(tensors)
        for tensor in items:
            if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
                continue
            scalar = tensor.numel() == 1
            it.pending += 1
            if scalar and tensor.is_cpu:  # read at once: no device to wait for
                self._loss_value(it, tensor.item(), scalar=True)
                continue
            with torch.no_grad():
                value = tensor if scalar else torch.isfinite(tensor).all()
                value = value.reshape(1).float()
            self.reader.submit([value], functools.partial(self._loss_ready, it, scalar=scalar))

    def _loss_ready(self, it: Iteration, hosts: list[torch.Tensor], scalar: bool) -> None:
        self._loss_value(it, hosts[0].item(), scalar)

    def _loss_value(self, it: Iteration, value: float, scalar: bool) -> None:
        it.pending -= 1
        if scalar:
            it.losses.append(value)
        scaler_overflow = scalar and math.isinf(value) and it.scaled  # by design: the scaler skips that step
        if not scaler_overflow and not (math.isfinite(value) if scalar else value == 1.0):
            self._on_trip(it, Trip("loss", ("loss",)))
        self._on_read(it)

    # ------------------------------------------------------------------ gradients
    def gradients(
        self, it: Iteration, key: int, watched: WatchedOptimizer | None, params: list[torch.Tensor]
    ) -> None:
        """The gradients of ``params`` as they are now (``key`` names the probe plan)."""
        self.reader.poll()
        grads = list(map(_GRAD, params))  # (C-level, as below)
        with_grad = params
        if any(map(operator.is_, grads, repeat(None))):  # (C-level; parameters without a gradient are rare)
            with_grad = [p for p in params if p.grad is not None]
            grads = [p.grad for p in with_grad]
        if watched is not None:
            watched.readings = []
        if not with_grad:
            return
        readings = self._prober.probe(key, with_grad, grads, squares=True)  # type: ignore[arg-type]
        if watched is not None:
            watched.readings = readings
        it.pending += 1
        self.reader.submit(
            list(map(_VECTOR, readings)),
            functools.partial(self._grads_ready, it, watched, with_grad, readings, it.backwards),
        )

    def _grads_ready(
        self,
        it: Iteration,
        watched: WatchedOptimizer | None,
        params: list[torch.Tensor],
        readings: list[Reading],
        backward: int,
        hosts: list[torch.Tensor],
    ) -> None:
        it.pending -= 1
        values = list(map(torch.Tensor.tolist, hosts))
        sq = math.fsum(map(Reading.sum_of_squares, readings, values))  # (one value per device; C-level)
        self.layer_norms.append((params, readings, values))
        if not math.isfinite(sq):
            index = watched.index if watched is not None else 0
            grads = [p.grad for p in params]
            bad = self._confirm(grads, functools.partial(self.name, index, params), readings, hosts)
            if bad:
                it.grad_sq, it.grad_backward = sq, backward
                self._on_trip(it, Trip("gradients", tuple(bad)))
                self._on_read(it)
                return
            # finite gradients whose float32 squares overflowed: measure the norm exactly for the history
            sq = math.fsum(
                float(torch.linalg.vector_norm(g, dtype=torch.float64)) ** 2 for g in grads if g is not None
            )
        if backward > it.grad_backward or it.grad_sq is None:  # the newest backward's (accumulated) gradients
            it.grad_sq, it.grad_backward = sq, backward
        elif backward == it.grad_backward:  # another optimizer's share of the same gradients
            it.grad_sq += sq
        self._on_read(it)

    def named_norms(self, entry: LayerNorms) -> dict[str, float]:
        """One gradient read as parameter name -> gradient L2 norm."""
        params, readings, values = entry
        out: dict[str, float] = {}
        for reading, vals in zip(readings, values, strict=True):
            for position, norm in reading.l2_norms(vals):
                out[self._naming.param(params[position], f"params[{position}]")] = norm
        return out

    # ------------------------------------------------------------------ before the update
    def before_update(self, it: Iteration, watched: WatchedOptimizer, opt: torch.optim.Optimizer) -> None:
        """Host-side checks before the update: the weights once before the first update (a checkpoint
        loaded after ``watch()``), the learning rate for the history, every number of every param group."""
        if not watched.checked:
            watched.checked = True
            params = watched.params()
            named = [(self.name(watched.index, params, i), p) for i, p in enumerate(params)]
            watched.bad_before = tuple(nonfinite_names(named))
            if watched.bad_before:
                self._on_trip(it, Trip("parameters", watched.bad_before, watched=watched))
        if watched.index == 0:
            lr = opt.param_groups[0].get("lr") if opt.param_groups else None
            it.lr = float(lr) if isinstance(lr, (int, float)) and not isinstance(lr, bool) else None
        if watched.groups.finite(opt.param_groups):  # (the common case, at a cost flat in the groups)
            return
        bad = nonfinite_hyperparameters(opt.param_groups, watched.index, host_only=True)
        if bad:
            self._on_trip(it, Trip("hyperparameters", tuple(h.name for h in bad), hyperparameters=tuple(bad)))

    # ------------------------------------------------------------------ weights and buffers
    def weights(self, it: Iteration, watched: WatchedOptimizer, opt: torch.optim.Optimizer) -> None:
        """The weights after ``opt``'s update: read, unless :mod:`~nanscope.watching.proof` proves from the
        gradients read for this update (their values on the host by now) that it kept them finite."""
        params = watched.params()
        if watched.bound is not None:
            # the norm of the gradients this update used: those of the newest backward, if read by now
            grad_norm = it.grad_norm if it.grad_backward == it.backwards else None
            watched.bound = proof.advance(watched.bound, opt, params, watched.steps, grad_norm)
            if watched.bound is not None:
                return
        moments = proof.first_moments(opt, params)
        squares = moments is not None  # norms bound the elements for the proof; sums only prove them finite
        readings = self._prober.probe(2 * watched.index + 1, params, params, squares=squares)
        moment_readings = (
            self._prober.probe(-3 - watched.index, moments, moments, squares=True) if moments else []
        )
        it.pending += 1
        self.reader.submit(
            [r.vector for r in readings + moment_readings],
            functools.partial(
                self._weights_ready, it, watched, opt, watched.steps, params, readings, moment_readings
            ),
        )

    def _weights_ready(
        self,
        it: Iteration,
        watched: WatchedOptimizer,
        opt: torch.optim.Optimizer,
        update: int,
        params: list[torch.Tensor],
        readings: list[Reading],
        moment_readings: list[Reading],
        hosts: list[torch.Tensor],
    ) -> None:
        it.pending -= 1
        hosts, moment_hosts = hosts[: len(readings)], hosts[len(readings) :]
        bad = self._confirm(params, functools.partial(self.name, watched.index, params), readings, hosts)
        if bad:
            watched.bound = None
            self._on_trip(it, Trip("parameters", tuple(bad), watched=watched))
        elif readings and readings[0].squares:
            norms = _norms(readings, hosts), _norms(moment_readings, moment_hosts)
            watched.bound = proof.anchor(opt, params, update, *norms)
        self._on_read(it)

    def all_buffers(self) -> list[tuple[str, torch.Tensor]]:
        """The buffers to watch. Buffers that hold +/-Inf but no NaN when first seen are constants by design
        (``-inf`` attention masks, ``generate_square_subsequent_mask``) and are left out; NaN never is."""
        if self._buffers is None:
            watched = []
            for name, buffer in self._naming.buffers():
                by_design = bool(torch.isinf(buffer).any()) and not bool(torch.isnan(buffer).any())
                if not by_design:
                    watched.append((name, buffer))
            self._buffers = watched
        return self._buffers

    def buffers(self, it: Iteration) -> None:
        """Buffers (BatchNorm statistics, ...) as they enter the iteration's first training forward."""
        named = self.all_buffers()
        if not named:
            return
        self.reader.poll()
        tensors = list(map(_SECOND, named))
        readings = self._prober.probe(-1, tensors, tensors, squares=False)
        it.pending += 1
        self.reader.submit(
            list(map(_VECTOR, readings)), functools.partial(self._buffers_ready, it, named, tensors, readings)
        )

    def _buffers_ready(
        self,
        it: Iteration,
        named: list[tuple[str, torch.Tensor]],
        tensors: list[torch.Tensor],
        readings: list[Reading],
        hosts: list[torch.Tensor],
    ) -> None:
        it.pending -= 1
        bad = self._confirm(tensors, lambda i: named[i][0], readings, hosts)
        if bad:
            it.bad_buffers_at_start = tuple(bad)
            self._on_trip(it, Trip("parameters", tuple(bad)))
        self._on_read(it)

    def output(self, it: Iteration, output: Any) -> None:
        """One "all finite" flag per floating output of a training forward, kept on the device. An
        ``isfinite`` reduction cannot overflow (a float32 sum of a finite +-1e37 output would)."""
        with torch.no_grad():
            flags = [
                torch.isfinite(t).all() for _, t in iter_tensors(output, "output") if t.is_floating_point()
            ]
        it.output_flags = (it.output_flags + flags)[-4:]

    # ------------------------------------------------------------------ helpers
    def name(self, opt_index: int, params: Sequence[torch.Tensor], i: int) -> str:
        return self._naming.param(params[i], f"optimizer[{opt_index}].params[{i}]")

    @staticmethod
    def _confirm(
        tensors: Sequence[torch.Tensor | None],
        name: Callable[[int], str],
        readings: list[Reading],
        hosts: list[torch.Tensor],
    ) -> list[str]:
        """Names of the tensors that really hold NaN/Inf among those whose probe value is non-finite."""
        suspects = [i for r, h in zip(readings, hosts, strict=True) for i in r.suspects(h.tolist())]
        if not suspects:  # (every healthy read)
            return []
        return nonfinite_names((name(i), tensors[i]) for i in sorted(suspects))


def _norms(readings: list[Reading], hosts: list[torch.Tensor]) -> list[float]:
    """The per-tensor L2 norms of norm readings, from their host values."""
    return [norm for r, h in zip(readings, hosts, strict=True) for _, norm in r.l2_norms(h.tolist())]
