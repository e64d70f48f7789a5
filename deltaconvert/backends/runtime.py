"""What a backend hands a model for one sequence, and what it sees of the model.

A backend never imports the model class: it is given a :class:`DeltaOpGraph` (any
``fx.GraphModule`` whose delta ops it may bind kernels to) and returns a
:class:`Runtime`, which the model keeps for the sequence.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Protocol

import torch
from torch import fx, nn

from ..ops.base import DeltaOp


class DeltaOpGraph(Protocol):
    """A converted model as backends see it: its graph and its delta ops by name."""

    graph: fx.Graph

    def delta_ops(self) -> dict[str, DeltaOp]: ...

    def get_submodule(self, target: str) -> nn.Module: ...


class WholeFrame:
    """What a captured frame's forward is entered into by default: nothing — every
    replay runs the whole frame. A backend's ``capture_body`` may return another object
    with these five methods (the CUDA backend's frame skip, ``cuda/frame_skip.py``)."""

    def __enter__(self) -> "WholeFrame":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    takes_restart = False  # whether capture_restart captures anything

    def capture_restart(self, restart: Callable[[], Any], outputs: Any) -> None:
        """After the captured forward returned ``outputs``: capture ``restart()`` (a dense
        frame that rewrites the state in place and returns outputs of the same
        structure) as a branch a replay may take instead (nothing here: no branch)."""

    def invalidate(self) -> None:
        """State the captured frame reads changed outside it (nothing to do here)."""

    def abandon(self) -> None:
        """The capture failed: undo what entering left in place (nothing here)."""


@dataclass(frozen=True)
class Runtime:
    """The backend bound to a sequence.

    ``frame()`` is entered around every forward (the CUDA backend runs each frame on its
    own stream); ``capture_stream`` is the stream a CUDA graph of the model must be
    captured on (None: any side stream). ``begin_frame()`` is called inside ``frame()``
    before every eager or captured forward runs its ops (so a CUDA graph replays it); the
    CUDA backend zeroes its work-list counts there (and, in eager frames, settles what its
    previous frame measured). ``prepare_capture()`` is called before a CUDA graph of the
    model is captured, outside the capture (the CUDA backend settles the same there:
    its per-layer plan, :mod:`deltaconvert.backends.cuda.dense_layers`); it returns
    whether the capture may follow now, False where it has just settled something, so
    that one eager frame first runs what the capture will (and lays out its buffers).
    ``restore_state()`` is called where every op's state must be complete before the
    next frame (the READY gate's installation: gated frames run the delta kernels on
    it); the CUDA backend restores there the accumulators its dense layers leave stale.
    ``capture_body(graph, pool)``, called
    before ``graph`` is captured into the memory pool ``pool``, returns the context the
    captured forward runs in (see :class:`WholeFrame`).
    """

    name: str
    frame: Callable[[], ContextManager] = contextlib.nullcontext
    capture_stream: torch.cuda.Stream | None = None
    begin_frame: Callable[[], None] = lambda: None
    prepare_capture: Callable[[], bool] = lambda: True
    restore_state: Callable[[], None] = lambda: None
    capture_body: Callable[[torch.cuda.CUDAGraph, tuple[int, int]], Any] = (
        lambda graph, pool: WholeFrame())
