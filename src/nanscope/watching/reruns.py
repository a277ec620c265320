"""Re-running the failing computation, after a trip: under the op tracer, on parts of the batch, on the last
good batch.

:class:`Reruns` serves :class:`~nanscope.watching.triage.Triage`. It replays the failing micro-batch through
``step_fn`` (API mode) or re-runs the model alone (batches the loop makes itself), and after any replay that
found the origin op it re-runs the computation on parts of the batch (:mod:`nanscope.localize.counterfactual`)
and, under ``rollback``, on the last good batch with the same weights (the weights or the batch?). Every re-run
starts from the failing micro-batch's RNG state; :func:`nanscope.localize.replay.replay` puts gradients,
buffers and RNG back, and the engine ignores the events a re-run produces (:attr:`Reruns.replaying`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable
from typing import Any

from nanscope.localize.classify import exploding
from nanscope.localize.counterfactual import find_culprits, take_rows
from nanscope.localize.model_call import ModelCall
from nanscope.localize.refeed import Refeed
from nanscope.localize.replay import RngState, replay
from nanscope.localize.samples import batch_rows, culprit_samples
from nanscope.localize.trace import OpFinding, OriginFound
from nanscope.recover.policy import Policy
from nanscope.report.model import Evidence, History
from nanscope.watching.batches import Drawn
from nanscope.watching.discovery import Naming
from nanscope.watching.state import Iteration, WatchedOptimizer

__all__ = ["Reruns", "loss_nan"]


class Reruns:
    def __init__(
        self,
        *,
        naming: Naming,
        policy: Policy,
        step_fn: Callable[[Any], object] | None,
        watched: Callable[[], Iterable[WatchedOptimizer]],
        history: Callable[[], History],
        last_good: Callable[[], tuple[Drawn | None, ModelCall | None] | None],
    ) -> None:
        self._naming = naming
        self._policy = policy
        self._step_fn = step_fn
        self._watched = watched
        self._history = history
        self._last_good = last_good
        self.replaying = False  # a re-run is going on: the engine ignores its events

    def after_refeed(
        self, refeed: Refeed, finding: OpFinding | None
    ) -> tuple[tuple[int, ...] | None, bool, Evidence | None, bool | None]:
        """The in-loop replay's finding completed: its samples (by rows, or by re-running the model on parts of
        the batch for an origin inside it), whether every row went bad, the counterfactual evidence, and
        whether the last good batch fails too."""
        samples, whole = culprit_samples(finding, refeed.index_list, refeed.batch_size)
        if finding is None:
            return samples, whole, None, None
        counterfactual = None
        call = refeed.model_call
        if finding.phase == "forward" and call is not None and refeed.batch_size:
            size = refeed.batch_size
            counterfactual, samples, whole = self._counterfactual(
                finding,
                lambda rows, stop: self.traced(
                    _call_on(call, rows, size), None, refeed.rng, len(rows), "loss", True, stop
                ),
                size,
                refeed.index_list,
                samples,
                whole,
            )
        return samples, whole, counterfactual, self.last_good(finding, refeed.rng, "loss", True)

    def step(
        self, it: Iteration, trigger: str
    ) -> tuple[OpFinding | None, tuple[int, ...] | None, bool, bool, Evidence | None]:
        """Re-run the failing micro-batch through ``step_fn`` under op tracing (API mode): the origin op, its
        samples, whether every row went bad, whether the whole replay was finite, and the counterfactual
        re-runs on parts of the batch (each through ``step_fn``)."""
        step_fn = self._step_fn
        assert step_fn is not None and it.rng is not None
        rng, nan = it.rng, loss_nan(it)
        drawn = it.batches[-1]
        index_list, size = batch_rows(drawn.batch, drawn.indices)
        finding, finite = self.traced(step_fn, drawn.batch, rng, size, trigger, nan)
        samples, whole = culprit_samples(finding, index_list, size)
        counterfactual = None
        if finding is not None and size:
            counterfactual, samples, whole = self._counterfactual(
                finding,
                lambda rows, stop: self.traced(
                    step_fn, take_rows(drawn.batch, rows, size), rng, len(rows), trigger, nan, stop
                ),
                size,
                index_list,
                samples,
                whole,
            )
        return finding, samples, whole, finding is None and finite, counterfactual

    def model_alone(
        self, it: Iteration, trigger: str
    ) -> tuple[OpFinding | None, tuple[int, ...] | None, bool, str | None, Evidence | None]:
        """Re-run the model alone under op tracing (the batch did not come from a DataLoader)."""
        call = it.model_call
        assert call is not None and it.rng is not None
        rng, nan = it.rng, loss_nan(it)
        backward = trigger == "gradients"
        if backward and not call.grads:
            return (
                None,
                None,
                False,
                (
                    "no replay: the batch did not come from a DataLoader, and the gradients at the model's output "
                    "were no longer kept when the values were read (lazy device reads: use eager=True, or pass "
                    "step_fn=...)"
                ),
                None,
            )
        drawn = it.batches[-1] if it.batches else None
        index_list, size = batch_rows(
            call.args if drawn is None else drawn.batch, None if drawn is None else drawn.indices
        )
        finding, _ = self.traced(
            functools.partial(call.rerun, backward=backward), None, rng, size, trigger, nan
        )
        samples, whole = culprit_samples(finding, index_list, size)
        counterfactual = None
        if finding is not None and finding.phase == "forward" and size:
            counterfactual, samples, whole = self._counterfactual(
                finding,
                lambda rows, stop: self.traced(
                    _call_on(call, rows, size), None, rng, len(rows), "loss", True, stop
                ),
                size,
                index_list,
                samples,
                whole,
            )
        note = None
        if finding is None:
            what = (
                "forward and backward (from the gradients that reached its output)" if backward else "forward"
            )
            note = (
                f"the batch did not come from a DataLoader, so the model alone was re-run under op tracing (its "
                f"{what}): no op inside it created the NaN/Inf, so the origin is outside the model (in the "
                "loss or the code around the model); pass step_fn=... to trace the whole step"
            )
        return finding, samples, whole, note, counterfactual

    def last_good(self, origin: OpFinding, rng: RngState, trigger: str, loss_nan: bool) -> bool | None:
        """Under rollback: whether the origin op fails again with the same weights on the last good batch
        (through ``step_fn``, or the model's forward for a forward origin). None where it cannot be re-run."""
        good = self._last_good() if self._policy.takes_snapshots else None
        if good is None:
            return None
        drawn, call = good
        stop_at = (origin.aten, origin.phase)
        fn: Callable[[Any], object]
        if self._step_fn is not None and drawn is not None:
            fn, batch, size = self._step_fn, drawn.batch, batch_rows(drawn.batch, drawn.indices)[1]
        elif origin.phase == "forward" and call is not None:
            fn, batch, size, trigger = (lambda _b: call.module(*call.args, **call.kwargs)), None, None, "loss"
        else:
            return None
        try:
            self.traced(fn, batch, rng, size, trigger, loss_nan, stop_at)
        except OriginFound:
            return True
        except Exception:  # a batch of another shape the computation rejects: not measured
            return None
        return False

    def _counterfactual(
        self,
        origin: OpFinding,
        replayed: Callable[[list[int], tuple[str, str]], tuple[OpFinding | None, bool]],
        size: int,
        index_list: list[int] | None,
        samples: tuple[int, ...] | None,
        whole: bool,
    ) -> tuple[Evidence | None, tuple[int, ...] | None, bool]:
        """Re-run the failing computation on parts of the batch (``replayed(rows)``) to find the rows whose
        presence makes it fail; returns the evidence and the samples and whole-batch flag it supports. Not
        for an explosion (the grad norm's growth shows the weights are the cause: every part would fail)."""
        if exploding(self._history()):
            return None, samples, whole
        stop_at = (origin.aten, origin.phase)

        def fails(rows: list[int]) -> bool | None:
            """The failure appears: the same op creates a NaN/Inf again (a harmless -inf a mask makes on a
            part of the batch does not count); the re-run stops there."""
            try:
                replayed(rows, stop_at)
            except OriginFound:
                return True
            except Exception:  # the computation does not run on part of the batch (fixed shapes)
                return None
            return False

        found = find_culprits(fails, size)
        if found is None:
            return None, samples, whole
        names = index_list if index_list is not None and len(index_list) == size else None
        data = {
            "rows": list(found.culprits),
            "samples": None if names is None else [names[r] for r in found.culprits],
            "together": found.together,
            "every": len(found.culprits) == size,
            "confirmed": found.confirmed,
            "runs": found.runs,
            "rows_run": found.rows_run,
        }
        evidence = Evidence("counterfactual", found.text(names), data)
        if found.together:
            return evidence, None, True
        if found.culprits and (found.confirmed or len(found.culprits) == size):
            named = None if names is None else tuple(sorted({names[r] for r in found.culprits}))
            return evidence, named, False
        return evidence, samples, whole

    def traced(
        self,
        fn: Callable[[Any], object],
        batch: Any,
        rng: RngState,
        size: int | None,
        trigger: str,
        loss_nan: bool,
        stop_at: tuple[str, str] | None = None,
    ) -> tuple[OpFinding | None, bool]:
        """``fn(batch)`` from the failing micro-batch's RNG state under the op tracer; the run is left as it
        was (gradients, buffers, RNG); the engine ignores the events it produces."""
        self.replaying = True
        try:
            return replay(
                fn,
                batch,
                start=rng,
                params=[p for w in self._watched() for p in w.params()],
                buffers=[b for model in self._naming.models.values() for b in model.buffers()],
                module_names=self.module_names(),
                param_names=self._naming.param_names(),
                batch_size=size,
                trigger=trigger,
                loss_nan=loss_nan,
                stop_at=stop_at,
            )
        finally:
            self.replaying = False

    def module_names(self) -> dict[int, str]:
        models = self._naming.models.values()
        return {id(m): self._naming.module(m) or "" for model in models for m in model.modules()}


def _call_on(call: ModelCall, rows: list[int], size: int) -> Callable[[Any], object]:
    """The model's forward on ``rows`` of the recorded call's inputs."""
    args, kwargs = take_rows(call.args, rows, size), take_rows(call.kwargs, rows, size)
    return lambda _batch: call.module(*args, **kwargs)


def loss_nan(it: Iteration) -> bool:
    """Whether the iteration's non-finite loss is a NaN (True also when no scalar loss was seen)."""
    bad = [v for v in it.losses if not math.isfinite(v)]
    return not bad or any(math.isnan(v) for v in bad)
