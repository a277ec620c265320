"""The engine: receives :class:`~nanscope.watching.events.Events`, runs the checks, decides, and acts.

Composed parts, each owning its state: :class:`~nanscope.watching.checks.StepChecks` (the always-on probes),
:class:`~nanscope.watching.run_log.RunLog` (iterations and history), :class:`~nanscope.watching.batches.Ledger`
(which batch each micro-batch consumed), :class:`~nanscope.watching.triage.Triage` (observation, replay plans),
:class:`~nanscope.recover.actions.Recoverer` (snapshots, back-off, clipping, quarantine) and
:class:`~nanscope.watching.early_warning.EarlyWarnings`; :class:`~nanscope.watching.verdicts.Verdicts` turns a
tripped check into a conclusion. The policy decides (pure); :meth:`Verdicts._act
<nanscope.watching.verdicts.Verdicts._act>` is the one place where a decision is carried out.

Step semantics (``docs/how-it-works.md``): gradients are judged when ``backward()`` returns (as backward left
them: before any clip, after the closure's backward under ``step(closure)``, per micro-batch under
accumulation); the update is discarded at ``before_update``; weights are judged at ``after_update`` (read,
or proven finite from what was read: :mod:`~nanscope.watching.proof`).
"""

from __future__ import annotations

import math
import warnings
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from nanscope.detect.diagnose import Diagnosis
from nanscope.errors import InternalErrorWarning
from nanscope.localize.model_call import ModelCall
from nanscope.localize.refeed import Stage
from nanscope.localize.replay import RngState
from nanscope.recover.actions import LiveState, Recoverer, discard_update
from nanscope.recover.policy import Policy, step_growth
from nanscope.recover.snapshot import State
from nanscope.report.model import Report
from nanscope.report.tensorboard import TensorBoardSink
from nanscope.watching import patches
from nanscope.watching.batches import Drawn, Ledger
from nanscope.watching.checks import StepChecks, Trip
from nanscope.watching.discovery import Naming, find_roots, graph_parameters
from nanscope.watching.early_warning import EarlyWarnings
from nanscope.watching.events import MISSING
from nanscope.watching.ranks import Ranks
from nanscope.watching.reader import DeviceReader
from nanscope.watching.reporting import build_report
from nanscope.watching.run_log import RunLog
from nanscope.watching.state import Iteration, WatchedOptimizer
from nanscope.watching.triage import Triage
from nanscope.watching.verdicts import Verdicts

__all__ = ["Engine"]

_MAX_BATCHES = 8  # micro-batches kept per iteration
_GROWTH_WINDOW = 10  # finite steps before a failure over which the grad norm's growth sizes the LR back-off


class Engine:
    def __init__(
        self,
        *,
        models: Mapping[str, nn.Module],
        policy: Policy,
        history: int,
        report_path: str | None,
        track_data: bool,
        eager: bool,
        step_fn: Callable[[Any], object] | None,
        quarantine: str | None,
        discover: bool,
        on_new_models: Callable[[list[nn.Module]], None],
        on_unseen_forward: Callable[[], None],
        scan_seconds: float = 30.0,
    ) -> None:
        self.policy = policy
        # the policy's answers, asked every step (a Policy is frozen)
        self._snapshots, self._recovers = policy.takes_snapshots, policy.recovers
        self._in_loop = track_data and policy.replays_in_loop  # a failing step may be replayed by the loop
        self.tensorboard: TensorBoardSink | None = None
        self._track_data = track_data
        self._step_fn = step_fn
        self._discover = discover
        self._on_new_models = on_new_models
        self._on_unseen_forward = on_unseen_forward
        self.naming = Naming()
        self.naming.set_models(models)
        # skipping needs each step's verdict before its update: read at once (a sync per step on CUDA)
        self.reader = DeviceReader(eager=eager or policy.reads_each_step)
        self.checks = StepChecks(self.reader, self.naming, on_trip=self._trip, on_read=self._read)
        self.log = RunLog(history)
        self.ledger = Ledger()
        self.watched: dict[int, WatchedOptimizer] = {}
        self.triage = Triage(
            naming=self.naming,
            checks=self.checks,
            policy=policy,
            step_fn=step_fn,
            watched=self._live_watched,
            history=self.log.history,
            layer_norms=lambda: self.checks.layer_norms,
            last_good=lambda: self.last_good,
        )
        self.recoverer = Recoverer(policy, quarantine, self._live_state)
        self.early = EarlyWarnings(lambda: [self.checks.named_norms(e) for e in self.checks.layer_norms])
        self.ranks = Ranks()
        self.verdicts = Verdicts(
            policy=policy,
            log=self.log,
            triage=self.triage,
            recoverer=self.recoverer,
            step=self.step,
            report=self.report,
            report_path=report_path,
            ranks=self.ranks,
            agreeing=lambda: bool(self.watched) and self.ranks.active,
            models=lambda: self.naming.models.values(),
            scan_seconds=scan_seconds,
        )
        self._discarding: set[int] = set()  # optimizers whose coming update is discarded
        # under rollback, the last applied finite iteration's batch and first model call (references)
        self.last_good: tuple[Drawn | None, ModelCall | None] | None = None
        self._state = LiveState()
        self._model_params: list[torch.Tensor] | None = None
        self._step: int | None = None  # cached step(); None when it must be recounted

    # ------------------------------------------------------------------ registry
    def track(self, opt: torch.optim.Optimizer) -> tuple[WatchedOptimizer, bool]:
        """The watched record of ``opt`` and whether it is new."""
        found = self.watched.get(id(opt))
        if found is not None and found.optimizer() is opt:
            return found, False
        found = WatchedOptimizer(optimizer=weakref.ref(opt), index=len(self.watched))
        self.watched[id(opt)] = found
        self._step = None
        if not self.naming.models or self._discover:
            self._found_models(find_roots(found.params()))
        return found, True

    def _found_models(self, roots: list[nn.Module]) -> None:
        if self.naming.add_found(roots):
            self.checks.models_changed()
            self._model_params = None
            self._on_new_models(roots)

    def _live_watched(self) -> list[WatchedOptimizer]:
        return [w for w in self.watched.values() if w.optimizer() is not None]

    def step(self) -> int:
        """Optimizer steps completed (the minimum over optimizers); with none, iterations (backward calls)."""
        if not self.watched:
            return self.log.watched
        if self._step is None:  # recounted only when an optimizer stepped or was added
            watched = self.watched.values()
            counts = [w.steps for w in watched if w.optimizer() is not None] or [w.steps for w in watched]
            self._step = min(counts)
        return self._step

    def _params_without_optimizer(self) -> list[torch.Tensor]:
        if self._model_params is None:
            models = self.naming.models.values()
            self._model_params = [p for m in models for p in m.parameters() if p.requires_grad]
        return self._model_params

    # ------------------------------------------------------------------ events: data
    def optimizer_created(self, opt: torch.optim.Optimizer) -> None:
        if self._discover:
            self.track(opt)

    def batch_drawn(self, batch: Any, indices: Any, source: str, dataset: Any, loader: Any) -> None:
        if self.triage.reruns.replaying or not self._track_data:
            return
        refeed = self.verdicts.refeed
        if refeed is not None and refeed.stage is Stage.HANDED_OUT and batch is refeed.batch:
            dropped = self.ledger.drawn(Drawn(batch, refeed.index_list, source, dataset, replay=True), loader)
        else:
            dropped = self.ledger.drawn(Drawn(batch, indices, source, dataset), loader)
        if refeed is not None and any(d.replay for d in dropped):
            refeed.lost()  # handed out at the end of an epoch and never consumed: hand it out again

    def observe_batch(self, batch: Any, indices: Any, source: str) -> None:
        """A batch the loop got elsewhere: consumed by the current micro-batch."""
        self._consumed(self.log.current, Drawn(batch, indices, source, None))

    def batch_to_replay(self, dataset: Any) -> Any:
        refeed = self.verdicts.refeed
        if refeed is None:
            return MISSING
        if refeed.stage is Stage.TRACING:  # the loop moved on without stepping: the replay is over
            self._finish_refeed()
            return MISSING
        return refeed.batch if refeed.hand_out(dataset) else MISSING

    def excluded_indices(self, dataset: Any) -> frozenset[int]:
        quarantine = self.recoverer.quarantine
        return frozenset() if quarantine is None or dataset is None else quarantine.excluded(dataset)

    def _consumed(self, it: Iteration, drawn: Drawn) -> None:
        it.batches.append(drawn)
        if len(it.batches) > _MAX_BATCHES:
            del it.batches[0]

    # ------------------------------------------------------------------ events: forward and backward
    def forward_started(self, module: nn.Module, args: Any, kwargs: Any) -> None:
        if not torch.is_grad_enabled() or self.triage.reruns.replaying:
            return
        it = self.log.current
        if it.in_micro_batch:
            return
        it.in_micro_batch = True
        drawn = self.ledger.consume(args, kwargs) if self._track_data else None
        if drawn is not None:
            self._consumed(it, drawn)
        refeed = self.verdicts.refeed
        if refeed is not None:
            if drawn is not None and drawn.replay and refeed.stage is Stage.HANDED_OUT:
                refeed.start(self.naming.module(module), ModelCall(module, args, kwargs))
            elif refeed.stage is not Stage.TRACING:
                it.discard = True  # consumes another batch before the replayed one comes round
            return
        if self.recoverer.rollback_due:
            self._roll_back()
        if not it.started:
            it.started = True
            if self._snapshots:  # references only: the last good batch, should a failure follow
                it.first_call = ModelCall(module, args, kwargs)
            if self._recovers:
                with torch.no_grad():
                    it.buffers_before = [
                        (b, b.detach().clone()) for _, b in self.naming.buffers(floating_only=False)
                    ]
            self.checks.buffers(it)
        if self._replayable() and not it.failed:  # (failed: a trip waits for the ranks' agreement)
            it.rng = RngState.capture()  # so that this micro-batch can be replayed exactly
            # a batch from elsewhere cannot be handed out again: keep the model call to re-run it alone
            it.model_call = (
                ModelCall(module, args, kwargs) if drawn is None and self._step_fn is None else None
            )
        it.first_module = id(module)
        # the output's finiteness is kept only where no replay of the whole step could find the op (no step_fn
        # and no in-loop replay; a model-alone re-run leaves the loss out)
        it.keep_output = self._step_fn is None and (
            it.rng is None or it.model_call is not None or not self.watched
        )

    def _replayable(self) -> bool:
        if self._step_fn is not None:
            return True
        return self._in_loop and (self.verdicts.diagnosis is None or self.policy.diagnoses_every_event)

    def forward_ended(self, module: nn.Module, args: Any, output: Any) -> None:
        it = self.log.current
        if not torch.is_grad_enabled() or it.first_module != id(module) or self.verdicts.refeed is not None:
            return
        call = it.model_call
        if call is not None and call.module is module and not call.hooked:
            call.watch_gradients(output)
        if it.keep_output:
            self.checks.output(it, output)

    def backward_started(self, tensors: Any) -> None:
        if self.triage.reruns.replaying or self.verdicts.refeed is not None:
            return
        it = self.log.current
        found_now = not self.watched and not self.naming.models and self._discover
        if found_now:  # (models found by this backward: their forward ran before they were hooked)
            self._found_models(find_roots(graph_parameters(tensors)))
        if not it.in_micro_batch:  # no watched forward ran: the loop calls submodules; consume at backward
            if not found_now or not self.naming.models:
                self._on_unseen_forward()
            drawn = self.ledger.consume((), {}) if self._track_data else None
            if drawn is not None:
                self._consumed(it, drawn)
        it.scaled = it.scaled or patches.is_scaled(tensors)
        self.checks.loss(it, tensors)

    def backward_ended(self, tensors: Any) -> None:
        if self.triage.reruns.replaying:
            return
        it = self.log.current
        it.in_micro_batch = False
        it.backwards += 1
        if self.verdicts.refeed is not None or it.scaled:
            return  # parked or replaying; a GradScaler's gradients are judged at the update
        watched = self._live_watched()
        for w in watched:
            self.checks.gradients(it, 2 * w.index, w, w.params())
        if not watched:  # no optimizer: one backward is one iteration
            self.checks.gradients(it, -2, None, self._params_without_optimizer())
        if it.model_call is not None:  # read by now unless read lazily on a device: not kept any longer
            it.model_call.forget_gradients()
        if not watched and self.verdicts.refeed is None and not it.done:
            self._finish(applied=True)

    def clipped(self, kind: str, limit: float) -> None:
        if math.isfinite(limit):  # HF Trainer calls clip_grad_norm_(params, inf) only to measure the norm
            self.verdicts.clipped(self.log.current, kind, limit)

    # ------------------------------------------------------------------ events: the update
    def before_update(self, opt: torch.optim.Optimizer) -> None:
        w, _ = self.track(opt)
        it = self.log.current
        refeed = self.verdicts.refeed
        if refeed is not None:
            if refeed.stage is not Stage.TRACING:
                self._discard(w)
                refeed.passed()
                return
            try:
                self._finish_refeed()  # may decide; what it decided is carried out below
            finally:
                retry = self.verdicts.refeed is None and not it.discard and not self.verdicts.stopped
                if not retry:  # a not_reproducible failure retried: the replay's finite update goes through
                    self._discard(w)
            if not retry:
                return
        self.reader.poll()
        params = w.params()
        due = self.recoverer.rollback_due  # decided earlier: carried out now (one decided below waits)
        if not (it.discard or due):
            self.checks.before_update(it, w, opt)
            fused_scaler = (
                getattr(opt, "found_inf", None) is not None or getattr(opt, "grad_scale", None) is not None
            )
            if (it.scaled and not fused_scaler) or it.backwards == 0:
                # unscaled by now (a GradScaler steps only on finite gradients), or no backward() was seen
                self.checks.gradients(it, 2 * w.index, w, params)
        if w.index == 0 and self.ranks.active:  # every rank, every step
            self._agree(it)
        if self.verdicts.refeed is not None or it.discard or due:
            self._discard(w)  # a check above tripped, or an earlier decision: the update must not run
            if due:
                self._roll_back()
            return
        self.recoverer.first_snapshot(self.step())
        factor = self.recoverer.back_off(opt)
        if w.index == 0 and it.lr is not None:
            it.lr *= factor
        limit = self.recoverer.clip(params, w.readings)
        if limit is not None:
            it.clip_threshold = limit

    def _roll_back(self) -> None:
        """Carry out a decided rollback, the LR back-off sized by the grad norm's growth before the failure."""
        self.recoverer.roll_back(self.step(), step_growth(self.log.history().grad_norm, _GROWTH_WINDOW))
        for w in self.watched.values():  # the weights and states written back are read after the next update
            w.bound = None

    def _agree(self, it: Iteration) -> None:
        """Every rank, every step, at the first optimizer's update: whether any rank saw a non-finite value
        (then all settle it together), and under FSDP2 the world's gradient norm from the local shards'."""
        sharded = self.checks.sharded
        bad, world_sq = self.ranks.agree(self.verdicts.pending is not None, it.grad_sq if sharded else None)
        if sharded and world_sq is not None:
            it.grad_sq = world_sq
        if bad:
            self.verdicts.agree(it)

    def _discard(self, w: WatchedOptimizer) -> None:
        discard_update(w.params())
        self._discarding.add(id(w.optimizer()))

    def after_update(self, opt: torch.optim.Optimizer) -> None:
        self.recoverer.restore_lr(opt)
        w, _ = self.track(opt)
        it = self.log.current
        if id(opt) in self._discarding:
            self._discarding.discard(id(opt))
            if self.verdicts.refeed is None and it.discard and not self._discarding:
                with torch.no_grad():  # BatchNorm statistics the failing forward moved
                    for buffer, saved in it.buffers_before:
                        buffer.copy_(saved)
                self._finish(applied=False)
            return
        self.checks.weights(it, w, opt)
        self.reader.commit()  # one device-to-host copy per step for everything this step submitted
        before = self.step()
        w.steps += 1
        self._step = None
        if self.step() > before:
            self._finish(applied=True)

    def update_skipped(self, opt: torch.optim.Optimizer) -> None:
        """A GradScaler found Inf/NaN gradients and skipped ``step()``: not a failure; the scale backs off."""
        if self.verdicts.refeed is None:
            self._finish(applied=False, keep=False, scaler_skipped=True)

    def _finish(self, *, applied: bool, keep: bool = True, scaler_skipped: bool = False) -> None:
        # the step index of the next iteration; with no optimizer it counts this iteration too
        following = self.step() if self.watched else self.log.watched + 1
        it = self.log.finish(following, applied=applied, keep=keep and applied, scaler_skipped=scaler_skipped)
        if applied and not it.failed and self._snapshots:
            self.last_good = (it.batches[-1] if it.batches else None, it.first_call)
        if applied:
            self.recoverer.iteration_done(self.step())
        self._read(it)

    # ------------------------------------------------------------------ values read
    def _read(self, it: Iteration) -> None:
        """A value of ``it`` was read (or it ended): once all are in, settle it."""
        if not it.done or it.pending or it.settled:
            return
        it.release()
        it.settled = True
        if not it.failed:
            self.recoverer.settled(it.step, it.grad_norm, it.clip_threshold)
            if self.early.update(it.step, it.mean_loss, it.grad_norm):
                self.recoverer.warned(it.step)
        if self.tensorboard is not None:
            self._log(it)

    def drop_references(self) -> None:
        """At close: let go of the model calls and batches kept for re-runs. A wrapped model (DDP, with its
        C++ reducer and threads) kept alive until the interpreter's teardown can abort the process there."""
        self.last_good = None
        it = self.log.current
        it.model_call = it.first_call = None

    def close_log(self) -> None:
        """At the end: the failing iteration a stop left unfinished, and the events not yet written."""
        sink = self.tensorboard
        if sink is None:
            return
        it = self.log.current
        self._log(it, values=it.failed and not it.settled)
        sink.close()
        self.tensorboard = None

    def _log(self, it: Iteration, *, values: bool = True) -> None:
        """``it``'s values (with ``values``) and the run's new events, to TensorBoard; a failing writer is
        dropped with a warning, the watching goes on."""
        sink, rec = self.tensorboard, self.recoverer
        if sink is None:
            return
        try:
            if values:
                sink.step(
                    it.step,
                    {
                        "loss": it.mean_loss,
                        "grad_norm": it.grad_norm,
                        "lr": it.lr,
                        "failed_steps": rec.failures,
                        "skipped_steps": rec.skipped,
                    },
                )
            headline = self.verdicts.diagnosis is not None and not sink.wrote_first
            sink.events(
                it.step,
                first=self.report().headline() if headline else None,
                interventions=rec.interventions,
                warnings=self.early.items,
            )
        except Exception as exc:  # the log is a convenience: it never stops the watching
            self.tensorboard = None
            warnings.warn(
                f"nanscope stopped writing TensorBoard logs: {exc!r}", InternalErrorWarning, stacklevel=2
            )

    # ------------------------------------------------------------------ the slow path
    @property
    def diagnosis(self) -> Diagnosis | None:
        return self.verdicts.diagnosis

    def _trip(self, it: Iteration, trip: Trip) -> None:
        self.verdicts.trip(it, trip)

    def _finish_refeed(self) -> None:
        self.verdicts.finish_refeed()

    # ------------------------------------------------------------------ state and report
    def _live_state(self) -> State:
        """What a snapshot copies and a rollback writes back into."""
        params = list({id(p): p for w in self._live_watched() for p in w.params()}.values())
        optimizers = [o for w in self._live_watched() if (o := w.optimizer()) is not None]
        buffers = [b for _, b in self.naming.buffers(floating_only=False)]
        return self._state.update(params, buffers, optimizers)

    def report(self) -> Report:
        return build_report(
            verdicts=self.verdicts,
            log=self.log,
            recoverer=self.recoverer,
            early=self.early,
            models=self.naming.models.values(),
            policy=self.policy,
            steps=self.step(),
            ranks=self.ranks,
        )
