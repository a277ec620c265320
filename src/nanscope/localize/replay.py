"""Replaying one failing step under the op tracer, and leaving the run exactly as it was.

The step function (``watch(..., step_fn=...)``) runs forward, loss and backward for one batch, with the random
number state of the original step restored (so dropout draws the same masks). Everything replay could change
is put back afterwards: gradients, buffers (BatchNorm statistics move in forward), and every RNG stream.
"""

from __future__ import annotations

import contextlib
import random
import struct
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from nanscope.localize.trace import OpFinding, OpTracer

__all__ = ["RngState", "replay"]


@dataclass(frozen=True)
class RngState:
    """The global random streams: torch (CPU and each CUDA device), Python's ``random``, and with
    ``capture(numpy=True)`` NumPy's global generator when the script has imported NumPy (Dataset transforms
    draw from it; reading it costs ~40 us, too much for every step)."""

    cpu: torch.Tensor
    cuda: tuple[torch.Tensor, ...]
    python: object
    numpy: object = None

    @classmethod
    def capture(cls, numpy: bool = False) -> RngState:
        # (is_initialized alone: False where CUDA is unavailable; its RNG is not in use before then)
        cuda = tuple(torch.cuda.get_rng_state_all()) if torch.cuda.is_initialized() else ()
        np = sys.modules.get("numpy") if numpy else None
        numpy_state = np.random.get_state() if np is not None else None
        return cls(torch.default_generator.get_state(), cuda, _python_state(), numpy_state)

    @classmethod
    @contextlib.contextmanager
    def kept(cls, numpy: bool = False) -> Iterator[None]:
        """The streams as they are now, put back when the block ends, whatever it raised: code that may draw
        random numbers (a random transform, a dropout) without moving the run's streams."""
        state = cls.capture(numpy=numpy)
        try:
            yield
        finally:
            state.restore()

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda:
            torch.cuda.set_rng_state_all(list(self.cuda))
        _set_python_state(self.python)
        np = sys.modules.get("numpy")
        if np is not None and self.numpy is not None:
            np.random.set_state(self.numpy)


# ---------------------------------------------------------------- Python's global random stream, read fast
_N = 624
_LAYOUT = struct.Struct(f"=i{_N}I")  # CPython's RandomObject after its header: int index; uint32_t state[624]


@dataclass(slots=True)
class _RawState:
    """Python's global ``random`` state as the interpreter holds it (2.5 KB, one copy)."""

    raw: bytes
    gauss_next: object


def _unpack(raw: bytes) -> tuple[int, ...]:
    """``Random.getstate()``'s internal tuple from the object's memory: the 624 words, then the index."""
    index, *words = _LAYOUT.unpack(raw)
    return (*words, index)


def _memory_reader() -> Callable[[random.Random], bytes] | None:
    """``read(instance) -> bytes``: a ``random.Random``'s Mersenne Twister state copied out of the object
    (C calls only, ~0.5 us) instead of ``getstate()``'s tuple of 625 ints (~9 us, the largest single cost of
    capturing the streams at every step). Only where a self-check on a private generator finds CPython's
    layout (``{PyObject_HEAD; int index; uint32_t state[624]}``); None elsewhere (``getstate()`` then)."""
    if sys.implementation.name != "cpython" or not getattr(sys, "_is_gil_enabled", lambda: True)():
        return None  # (without the GIL a draw in another thread could change the words during the copy)
    offset = object.__basicsize__
    if random.Random.__basicsize__ < offset + _LAYOUT.size:  # never read past the object
        return None
    try:
        import ctypes

        words = ctypes.c_char * _LAYOUT.size

        def read(instance: random.Random) -> bytes:
            return words.from_address(id(instance) + offset).raw

        probe = random.Random(0x5EED)
        for _ in range(3):  # at a fresh seed and after twists (624 words each)
            if _unpack(read(probe)) != probe.getstate()[1]:
                return None
            probe.getrandbits(32 * 1000)
    except Exception:
        return None
    return read


_read_memory = _memory_reader()


def _python_state() -> object:
    instance = getattr(random, "_inst", None)
    if _read_memory is None or type(instance) is not random.Random:
        return random.getstate()
    return _RawState(_read_memory(instance), instance.gauss_next)  # type: ignore[attr-defined]


def _set_python_state(state: object) -> None:
    if isinstance(state, _RawState):
        state = (random.Random.VERSION, _unpack(state.raw), state.gauss_next)
    random.setstate(state)  # type: ignore[arg-type]


def replay(
    step_fn: Callable[[Any], object],
    batch: Any,
    *,
    start: RngState,
    params: Sequence[torch.Tensor],
    buffers: Sequence[torch.Tensor],
    module_names: dict[int, str],
    batch_size: int | None,
    param_names: dict[int, str] | None = None,
    trigger: str = "loss",
    loss_nan: bool = True,
    stop_at: tuple[str, str] | None = None,
) -> tuple[OpFinding | None, bool]:
    """Run ``step_fn(batch)`` from RNG state ``start`` under an :class:`OpTracer`; restore everything after.
    Returns the origin op, and whether every op of the replay was finite (the failure did not reproduce).
    With ``stop_at`` (a light tracer) it raises :class:`~nanscope.localize.trace.OriginFound` as soon as
    that op creates a NaN/Inf, after putting everything back."""
    grads = [p.grad for p in params]
    saved_buffers = [b.detach().clone() for b in buffers]
    now = RngState.capture()
    tracer = OpTracer(module_names, batch_size, param_names, stop_at)
    try:
        for p in params:
            p.grad = None
        start.restore()
        with tracer:
            step_fn(batch)
    finally:
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        with torch.no_grad():
            for b, s in zip(buffers, saved_buffers, strict=True):
                b.copy_(s)
        now.restore()
    return tracer.pick(trigger, loss_nan), not tracer.saw_nonfinite
