"""What a backend hands a model for one sequence, and what it sees of the model.

A backend never imports the model class: it is given a :class:`DeltaOpGraph` (any
``fx.GraphModule`` whose delta ops it may bind kernels to) and returns a
:class:`Runtime`, which the model keeps for the sequence.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, ContextManager, Protocol

import torch
from torch import fx, nn

from ..ops.base import DeltaOp


class DeltaOpGraph(Protocol):
    """A converted model as backends see it: its graph and its delta ops by name."""

    graph: fx.Graph

    def delta_ops(self) -> dict[str, DeltaOp]: ...

    def get_submodule(self, target: str) -> nn.Module: ...


@dataclass(frozen=True)
class Runtime:
    """The backend bound to a sequence.

    ``frame()`` is entered around every forward (the CUDA backend runs each frame on its
    own stream); ``capture_stream`` is the stream a CUDA graph of the model must be
    captured on (None: any side stream). ``begin_frame()`` is called inside ``frame()``
    before every eager or captured forward runs its ops (so a CUDA graph replays it); the
    CUDA backend zeroes its work-list counts there.
    """

    name: str
    frame: Callable[[], ContextManager] = contextlib.nullcontext
    capture_stream: torch.cuda.Stream | None = None
    begin_frame: Callable[[], None] = lambda: None
