"""The watcher: attaches to a training run, checks every step cheaply, diagnoses on a trigger, acts per policy.

The hot path per optimizer step is two fused norm passes (gradients before the step, weights and buffers
after it), one ``isfinite`` per loss handed to ``backward()``, and a walk over the param groups' numbers. All
device values go through :class:`~nanscope.watching.reader.DeviceReader`, so CUDA runs are not synchronized per
step. Only after something non-finite is seen does the watcher run exact element-wise checks and build an
:class:`~nanscope.detect.diagnose.Observation` for the pure :func:`~nanscope.detect.diagnose.diagnose`.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import traceback
import warnings
import weakref
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from nanscope.detect.diagnose import Diagnosis
from nanscope.detect.scan import (
    iter_tensors,
    nonfinite_hyperparameters,
    nonfinite_names,
)
from nanscope.errors import InternalErrorWarning, NonFiniteError, UsageError
from nanscope.localize.replay import RngState
from nanscope.recover.policy import Policy, make_policy
from nanscope.report import json as report_json
from nanscope.report.model import Detection, History, Report
from nanscope.watching import patches
from nanscope.watching.data import MISSING
from nanscope.watching.discovery import Naming, find_roots, normalize_models
from nanscope.watching.environment import environment
from nanscope.watching.probes import Prober, Reading
from nanscope.watching.reader import DeviceReader
from nanscope.watching.refeed import Refeed, Stage
from nanscope.watching.state import Iteration, Tracked
from nanscope.watching.triage import Triage

__all__ = ["Watcher", "watch"]

_MAX_BATCHES = 8
_MAX_DETECTIONS = 100
_LAYER_WINDOW = 32


def _optimizers(optimizer: Any) -> list[torch.optim.Optimizer]:
    if optimizer is None:
        return []
    items = [optimizer] if isinstance(optimizer, torch.optim.Optimizer) else list(optimizer)
    wrong = [type(o).__name__ for o in items if not isinstance(o, torch.optim.Optimizer)]
    if wrong:
        raise UsageError(
            f"optimizer must be a torch.optim.Optimizer or a list of them; got {', '.join(wrong)}. "
            "Pass the optimizer(s) you call .step() on."
        )
    return items


class Watcher(Triage):
    """Watches one training run. Use :func:`nanscope.watch` to make one.

    Lifecycle: open (hooks attached) -> closed (everything detached, final report built). ``close()`` is
    idempotent; using a closed watcher's hooks does nothing.
    """

    def __init__(
        self,
        model: nn.Module | Sequence[nn.Module] | Mapping[str, nn.Module] | None = None,
        optimizer: torch.optim.Optimizer | Sequence[torch.optim.Optimizer] | None = None,
        *,
        policy: str | Policy = "stop",
        history: int = 2048,
        report_path: str | None = None,
        track_data: bool = True,
        eager: bool = False,
        step_fn: Callable[[Any], object] | None = None,
        quarantine: str | None = None,
    ) -> None:
        problems = []
        try:
            self._policy = make_policy(policy)
        except UsageError as exc:
            problems.append(str(exc))
        try:
            optimizers = _optimizers(optimizer)
        except UsageError as exc:
            problems.append(str(exc))
            optimizers = []
        if step_fn is not None and not callable(step_fn):
            problems.append(f"step_fn must be callable as step_fn(batch); got {type(step_fn).__name__}")
        if isinstance(history, bool) or not isinstance(history, int) or history < 1:
            problems.append(f"history must be a positive int (steps kept); got {history!r}")
        models = {}
        try:
            models = normalize_models(model)
            bad = [k for k, m in models.items() if not isinstance(m, nn.Module)]
            if bad:
                problems.append("model must be an nn.Module, a list of them or a dict name -> nn.Module")
        except TypeError:
            problems.append(
                f"model must be an nn.Module, a list of them or a dict; got {type(model).__name__}"
            )
        if problems:
            raise UsageError("nanscope.watch(): " + "; ".join(problems))
        self._discover = optimizer is None
        self._step_fn = step_fn
        self._replaying = False
        self._refeed: Refeed | None = None
        self._skip: set[int] = set()  # optimizers whose current step is skipped (the failing step, replayed)
        self._track_data = track_data
        self._report_path = report_path
        # skipping needs each step's verdict before its update: read at once (a sync per step on CUDA)
        self._reader = DeviceReader(eager=eager or self._policy.handler == "skip")
        self._prober = Prober()
        self._naming = Naming()
        self._naming.set_models(models)
        self._tracked: dict[int, Tracked] = {}
        self._hooked_roots: set[int] = set()
        self._handles: list[RemovableHandle] = []
        self._history: deque[Iteration] = deque(maxlen=history)
        # per-tensor grad norms of the last steps, as read (references only): which layers grew fastest
        self._layer_norms: deque[tuple[list[torch.Tensor], list[Reading], list[list[float]]]] = deque(
            maxlen=_LAYER_WINDOW
        )
        self._dropped = 0
        self._it = Iteration(step=0)
        self._diagnosis: Diagnosis | None = None
        self._detections: list[Detection] = []
        self._detections_dropped = 0
        self._stopped = False
        self._broken = False
        self._closed = False
        self._final: Report | None = None
        self._buffers: list[tuple[str, torch.Tensor]] | None = None
        self._init_recovery(quarantine)
        patches.activate(self)
        try:
            self._hook_roots(models.values())
            for opt in optimizers:
                self._track(opt)
            if self._discover:
                from torch.optim.optimizer import (
                    register_optimizer_step_post_hook,
                    register_optimizer_step_pre_hook,
                )

                self._handles.append(register_optimizer_step_pre_hook(self._pre_hook))
                self._handles.append(register_optimizer_step_post_hook(self._post_hook))
        except BaseException:
            self._detach()
            raise

    # ---------------------------------------------------------------- lifecycle
    def __enter__(self) -> Watcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def stopped(self) -> bool:
        """True once the ``stop`` policy raised :class:`NonFiniteError` (even if the script caught it)."""
        return self._stopped

    def close(self) -> Report:
        """Detach everything, read any pending device values, and return the final report."""
        if self._final is not None:
            return self._final
        if self._refeed is not None:  # the loop ended (or failed) before the replay finished
            with contextlib.suppress(NonFiniteError):  # closing reports; it does not raise for the policy
                if self._refeed.stage is Stage.TRACING:
                    self._finish_refeed()
                else:
                    refeed, self._refeed = self._refeed, None
                    refeed.stop()
                    note = "no replay: the training loop ended before the failing batch could be run again"
                    self._conclude(replace(refeed.observation, replay_note=note), self._it)
        try:
            if not self._broken:
                self._guard(self._reader.flush)
        finally:
            self._detach()
            self._closed = True
            self._final = self.report()
            if self._snapshots is not None:
                self._snapshots.close()
            self._it = Iteration(step=self._it.step)
            if self._report_path:
                report_json.write(self._final, self._report_path)
        return self._final

    def _detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        patches.deactivate(self)

    # ---------------------------------------------------------------- public helpers
    def observe_batch(self, batch: Any, indices: Sequence[int] | None = None, source: str = "batch") -> None:
        """Tell the watcher about a batch that did not come from a DataLoader (custom loops).

        ``indices`` are the dataset indices of the batch rows, so a report can name the culprit samples.
        """
        self._on_batch(batch, indices, source, None, explicit=True)

    @property
    def step(self) -> int:
        """Index of the current iteration: ``optimizer.step()`` calls completed (the minimum over optimizers)."""
        return self._step()

    def report(self) -> Report:
        """The report as of now (healthy so far, or the diagnosis of the first non-finite value)."""
        entries = list(self._history)
        if self._it.losses or self._it.grad_sq is not None:
            entries.append(self._it)
        diag = self._diagnosis
        return Report(
            verdict="healthy" if diag is None else "nonfinite",
            first_nonfinite=None if diag is None else diag.first,
            cause=None if diag is None else diag.cause,
            suggestions=() if diag is None else diag.suggestions,
            history=History(
                step=tuple(e.step for e in entries),
                loss=tuple(sum(e.losses) / len(e.losses) if e.losses else None for e in entries),
                grad_norm=tuple(None if e.grad_sq is None else math.sqrt(e.grad_sq) for e in entries),
                lr=tuple(e.lr for e in entries),
                dropped=self._dropped,
            ),
            environment=environment(self._naming.models.values()),
            policy=self._policy.name,
            steps=self._step(),
            detections=tuple(self._detections),
            detections_dropped=self._detections_dropped,
            interventions=tuple(self._interventions),
            early_warnings=self._early_warnings(None if diag is None else diag.first.step),
            outcome=self._outcome(),
        )

    # ---------------------------------------------------------------- plumbing
    def _guard(self, fn: Callable[..., None], *args: Any) -> None:
        if self._broken or self._closed or self._replaying:
            return
        try:
            fn(*args)
        except NonFiniteError:
            raise
        except Exception as exc:  # an internal failure must never kill training
            self._broken = True
            detail = (
                "".join(traceback.format_exception(exc)) if os.environ.get("NANSCOPE_DEBUG") else repr(exc)
            )
            warnings.warn(
                f"nanscope stopped watching after an internal error ({detail}); training continues unwatched. "
                "Set NANSCOPE_DEBUG=1 for the full traceback and please report it.",
                InternalErrorWarning,
                stacklevel=3,
            )

    def _release(self, it: Iteration) -> None:
        """Drop what the iteration no longer needs; once its values are all read, settle it (recovery)."""
        it.release()
        if it.done and it.pending == 0 and not it.settled:
            it.settled = True
            self._settled(it)

    def _step(self) -> int:
        tracked = self._tracked.values()
        counts = [t.steps for t in tracked if t.optimizer() is not None] or [t.steps for t in tracked]
        return min(counts) if counts else 0

    def _track(self, opt: torch.optim.Optimizer) -> Tracked:
        tracked = self._tracked.get(id(opt))
        if tracked is not None and tracked.optimizer() is opt:
            return tracked
        tracked = Tracked(optimizer=weakref.ref(opt), index=len(self._tracked))
        self._tracked[id(opt)] = tracked
        if not self._discover:
            self._handles.append(opt.register_step_pre_hook(self._pre_hook))
            self._handles.append(opt.register_step_post_hook(self._post_hook))
        if not self._naming.models or self._discover:
            params = [p for g in opt.param_groups for p in g["params"]]
            roots = find_roots(params)
            if self._naming.add_found(roots):
                self._buffers = None
                self._hook_roots(roots)
        return tracked

    def _hook_roots(self, roots: Any) -> None:
        for root in roots:
            if id(root) not in self._hooked_roots:
                self._hooked_roots.add(id(root))
                self._handles.append(root.register_forward_pre_hook(self._on_forward_start))
                self._handles.append(root.register_forward_hook(self._on_output))

    def _params(self, opt: torch.optim.Optimizer) -> list[torch.Tensor]:
        return [p for g in opt.param_groups for p in g["params"]]

    def _name(self, opt_index: int, params: Sequence[torch.Tensor], i: int) -> str:
        return self._naming.param(params[i], f"optimizer[{opt_index}].params[{i}]")

    # ---------------------------------------------------------------- hooks (entry points)
    def _on_optimizer_created(self, opt: torch.optim.Optimizer) -> None:
        if self._discover:
            self._guard(self._discover_optimizer, opt)

    def _discover_optimizer(self, opt: torch.optim.Optimizer) -> None:
        self._track(opt)

    def _on_forward_start(self, module: nn.Module, inputs: Any) -> None:
        if self._closed or self._replaying or not torch.is_grad_enabled():
            return
        if self._refeed is not None:
            if self._refeed.stage is Stage.ARMED:
                self._guard(self._refeed.start)
            return
        if self._rollback_due:
            self._guard(self._before_forward)
        if not self._it.forward_checked:
            self._it.forward_checked = True
            replayable = self._policy.handler != "warn" and (self._diagnosis is None or self._policy.recovers)
            if self._step_fn is not None or (self._track_data and replayable):
                self._it.rng = RngState.capture()  # so that the step can be replayed exactly
            if self._policy.recovers:
                self._guard(self._keep_buffers, self._it)
            self._guard(self._check_buffers, self._it)

    def _on_output(self, module: nn.Module, inputs: Any, output: Any) -> None:
        if not self._closed and torch.is_grad_enabled() and self._replay_note(self._it) is not None:
            self._guard(self._sum_output, output)

    def _sum_output(self, output: Any) -> None:
        """One reduction of the model's output per training forward, kept on the device: the sum is NaN/Inf
        if any element is, and tells forward from loss after a trigger without keeping the output alive.
        Only for iterations that could not be replayed: a replay finds the op itself."""
        with torch.no_grad():
            sums = [
                t.sum(dtype=torch.float32) for _, t in iter_tensors(output, "output") if t.is_floating_point()
            ]
        self._it.output_sums = (self._it.output_sums + sums)[-4:]

    def _on_batch(self, batch: Any, indices: Any, source: str, dataset: Any, explicit: bool = False) -> None:
        if self._closed or self._replaying or (not self._track_data and not explicit):
            return
        batches = self._it.batches
        batches.append((batch, indices, source, dataset))
        if len(batches) > _MAX_BATCHES:
            del batches[0]

    def _on_backward(self, tensors: Any) -> None:
        if self._refeed is None:
            self._guard(self._check_loss, tensors)

    def _excluded(self, dataset: Any) -> frozenset[int]:
        if self._quarantine is None or self._closed or dataset is None:
            return frozenset()
        return self._quarantine.excluded(dataset)

    def _refeed_batch(self, dataset: Any) -> Any:
        """The failing batch again, for the next ``next()`` on a loader of the same Dataset (not, say, a
        validation loader that runs in between)."""
        if self._refeed is None or self._closed:
            return MISSING
        if self._refeed.stage is Stage.TRACING:  # the loop moved on without stepping: the replay is over
            self._guard(self._finish_refeed)
            return MISSING
        if self._refeed.stage is not Stage.PARKED or dataset is not self._refeed.dataset:
            return MISSING
        return self._refeed.take_batch()

    def _pre_hook(self, opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self._guard(self._check_before_step, opt)
        if self._refeed is None and id(opt) not in self._skip:
            self._guard(self._act_before_update, opt)

    def _post_hook(self, opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self._guard(self._after_update, opt)
        self._guard(self._check_after_step, opt)

    # ---------------------------------------------------------------- the always-on checks
    def _check_loss(self, tensors: Any) -> None:
        self._reader.poll()
        items = [tensors] if isinstance(tensors, torch.Tensor) else list(tensors)
        it = self._it
        for tensor in items:
            if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
                continue
            scalar = tensor.numel() == 1
            it.pending += 1
            if scalar and tensor.device.type == "cpu":  # read at once: no device to wait for
                self._loss_value(it, tensor.item(), scalar=True)
                continue
            with torch.no_grad():
                value = tensor if scalar else torch.isfinite(tensor).all()
                value = value.reshape(1).float()
            self._reader.submit([value], functools.partial(self._loss_ready, it, scalar=scalar))

    def _loss_ready(self, it: Iteration, hosts: list[torch.Tensor], scalar: bool) -> None:
        self._loss_value(it, hosts[0].item(), scalar)

    def _loss_value(self, it: Iteration, value: float, scalar: bool) -> None:
        it.pending -= 1
        if scalar:
            it.losses.append(value)
        if scalar and math.isinf(value):
            # GradScaler's scaled loss overflows by design and the scaler skips that step: judge at the step
            it.inf_loss = True
            if it.scaler_step is False:
                self._trigger(it, "loss", ("loss",))
        elif not (math.isfinite(value) if scalar else value == 1.0):
            self._trigger(it, "loss", ("loss",))
        self._release(it)

    def _act_before_update(self, opt: torch.optim.Optimizer) -> None:
        self._before_update(opt, self._track(opt), self._it)

    def _skip_step(self, opt: torch.optim.Optimizer) -> None:
        """Make ``opt.step()`` a no-op: optimizers leave parameters without gradients untouched (no weight,
        state, step-count or weight-decay change)."""
        for p in self._params(opt):
            p.grad = None
        self._skip.add(id(opt))

    def _check_before_step(self, opt: torch.optim.Optimizer) -> None:
        if self._refeed is not None:
            # the replay ends at the replayed step (outside any torch-function mode, unlike backward())
            self._skip_step(opt)
            if self._refeed.stage is Stage.TRACING:
                self._finish_refeed()
            return
        self._reader.poll()
        tracked = self._track(opt)
        tracked.readings = []
        it = self._it
        if it.discard or self._rollback_due:
            return  # the policy already discarded this step (see _before_update)
        params = self._params(opt)
        if not tracked.checked:  # weights loaded after watch() but before training, e.g. a checkpoint
            tracked.checked = True
            named = [(self._name(tracked.index, params, i), p) for i, p in enumerate(params)]
            tracked.bad_before = tuple(nonfinite_names(named))
            if tracked.bad_before:
                self._trigger(it, "parameters", tracked.bad_before, tracked=tracked)
        if tracked.index == 0:
            lr = opt.param_groups[0].get("lr") if opt.param_groups else None
            it.lr = float(lr) if isinstance(lr, (int, float)) and not isinstance(lr, bool) else None
        bad_hp = nonfinite_hyperparameters(opt.param_groups, tracked.index, host_only=True)
        if bad_hp:
            self._trigger(it, "hyperparameters", tuple(h.name for h in bad_hp), hyperparameters=tuple(bad_hp))
        scaled = getattr(opt, "found_inf", None) is not None or getattr(opt, "grad_scale", None) is not None
        it.scaler_step = scaled
        if scaled:
            return  # a GradScaler drives this step and skips it in-kernel if its gradients are non-finite
        if it.inf_loss:
            self._trigger(it, "loss", ("loss",))
            if self._refeed is not None:
                self._skip_step(opt)
                return
        with_grad = [p for p in params if p.grad is not None]
        if not with_grad:
            return
        grads: list[torch.Tensor] = [p.grad for p in with_grad]  # type: ignore[misc]
        readings = self._prober.probe(2 * tracked.index, with_grad, grads, squares=True)
        tracked.readings = readings
        it.pending += 1
        self._reader.submit(
            [r.vector for r in readings],
            functools.partial(self._grads_ready, it, tracked, with_grad, readings),
        )
        if self._refeed is not None:  # the gradients were the first non-finite values: replay this step
            self._skip_step(opt)

    def _grads_ready(
        self,
        it: Iteration,
        tracked: Tracked,
        params: list[torch.Tensor],
        readings: list[Reading],
        hosts: list[torch.Tensor],
    ) -> None:
        it.pending -= 1
        values = [h.tolist() for h in hosts]
        sq = math.fsum(r.sum_of_squares(v) for r, v in zip(readings, values, strict=True))
        self._layer_norms.append((params, readings, values))
        if not math.isfinite(sq):
            name = functools.partial(self._name, tracked.index, params)
            grads = [p.grad for p in params]
            bad = self._confirm(grads, name, readings, hosts)
            if bad:
                it.grad_sq = sq
                self._trigger(it, "gradients", tuple(bad))
                self._release(it)
                return
            # finite gradients whose float32 squares overflowed: measure the norm exactly for the history
            sq = math.fsum(
                float(torch.linalg.vector_norm(g, dtype=torch.float64)) ** 2 for g in grads if g is not None
            )
        it.grad_sq = sq if it.grad_sq is None else it.grad_sq + sq
        self._release(it)

    def _all_buffers(self) -> list[tuple[str, torch.Tensor]]:
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

    def _keep_buffers(self, it: Iteration) -> None:
        with torch.no_grad():
            it.buffers_before = [
                (b, b.detach().clone()) for _, b in self._naming.buffers(floating_only=False)
            ]

    def _check_buffers(self, it: Iteration) -> None:
        """Buffers (BatchNorm statistics, ...) as they enter the iteration's first training forward."""
        self._reader.poll()
        named = self._all_buffers()
        if not named:
            return
        tensors = [t for _, t in named]
        readings = self._prober.probe(-1, tensors, tensors, squares=False)
        it.pending += 1
        self._reader.submit(
            [r.vector for r in readings], functools.partial(self._buffers_ready, it, named, readings)
        )

    def _buffers_ready(
        self,
        it: Iteration,
        named: list[tuple[str, torch.Tensor]],
        readings: list[Reading],
        hosts: list[torch.Tensor],
    ) -> None:
        it.pending -= 1
        bad = self._confirm([t for _, t in named], lambda i: named[i][0], readings, hosts)
        if bad:
            it.bad_buffers_at_start = tuple(bad)
            self._trigger(it, "parameters", tuple(bad))
        self._release(it)

    @staticmethod
    def _confirm(
        tensors: Sequence[torch.Tensor | None],
        name: Callable[[int], str],
        readings: list[Reading],
        hosts: list[torch.Tensor],
    ) -> list[str]:
        """Names of the tensors that really hold NaN/Inf among those whose probe value is non-finite."""
        suspects = [i for r, h in zip(readings, hosts, strict=True) for i in r.suspects(h.tolist())]
        return nonfinite_names((name(i), tensors[i]) for i in sorted(suspects))

    def _check_after_step(self, opt: torch.optim.Optimizer) -> None:
        if id(opt) in self._skip:
            self._skip.discard(id(opt))
            if self._refeed is None and self._it.discard:  # a discarded step: the next iteration starts
                it, self._it = self._it, Iteration(step=self._step())
                with torch.no_grad():  # BatchNorm statistics the failing forward moved
                    for buffer, saved in it.buffers_before:
                        buffer.copy_(saved)
                self._iteration_ended(applied=False)
                it.done = True
                self._release(it)
            return
        tracked = self._track(opt)
        it = self._it
        params = self._params(opt)
        readings = self._prober.probe(2 * tracked.index + 1, params, params, squares=False)
        it.pending += 1
        self._reader.submit(
            [r.vector for r in readings], functools.partial(self._params_ready, it, tracked, params, readings)
        )
        self._reader.commit()  # one device-to-host copy per step for everything this step submitted
        before = self._step()
        tracked.steps += 1
        if self._step() > before:
            it.done = True
            if len(self._history) == self._history.maxlen:
                self._dropped += 1
            self._history.append(it)
            self._it = Iteration(step=self._step())
            self._iteration_ended(applied=True)
            self._after_iteration()
            self._release(it)

    def _params_ready(
        self,
        it: Iteration,
        tracked: Tracked,
        params: list[torch.Tensor],
        readings: list[Reading],
        hosts: list[torch.Tensor],
    ) -> None:
        it.pending -= 1
        bad = self._confirm(params, functools.partial(self._name, tracked.index, params), readings, hosts)
        if bad:
            self._trigger(it, "parameters", tuple(bad), tracked=tracked)
        self._release(it)


def watch(
    model: nn.Module | Sequence[nn.Module] | Mapping[str, nn.Module] | None,
    optimizer: torch.optim.Optimizer | Sequence[torch.optim.Optimizer] | None,
    *,
    policy: str | Policy = "stop",
    history: int = 2048,
    report_path: str | None = None,
    track_data: bool = True,
    eager: bool = False,
    step_fn: Callable[[Any], object] | None = None,
    quarantine: str | None = None,
) -> Watcher:
    """Watch a training run; use as a context manager or call ``.close()``.

    >>> with nanscope.watch(model, optimizer) as w:        # doctest: +SKIP
    ...     for x, y in loader:
    ...         loss = loss_fn(model(x), y); loss.backward(); optimizer.step(); optimizer.zero_grad()

    ``policy``: ``"stop"`` raises :class:`nanscope.NonFiniteError` (with ``.report``) before the failing update;
    ``"warn"`` warns once and lets training go on. ``optimizer=None`` discovers optimizers as they step.
    ``track_data`` maps DataLoader batches to dataset indices. ``eager`` reads device flags at once (a host
    sync per step on CUDA) instead of a few steps later. ``report_path`` writes the JSON report there.
    ``step_fn(batch)`` runs forward, loss and backward for one batch (no optimizer step): with it, a NaN
    whose cause is not in the data, weights or hyperparameters is localized by replaying the failing step
    under op tracing (op, module, source line, kind, culprit samples); the run is left as it was.
    """
    return Watcher(
        model,
        optimizer,
        policy=policy,
        history=history,
        report_path=report_path,
        track_data=track_data,
        eager=eager,
        step_fn=step_fn,
        quarantine=quarantine,
    )
