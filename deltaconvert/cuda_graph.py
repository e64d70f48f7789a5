"""CUDA-graph replay of a converted model's delta frames.

With ``model.cuda_graph = True`` (or ``convert(..., cuda_graph=True)``) a sequence runs:

1. the dense first frame, eagerly (it creates every state buffer);
2. one eager delta frame (it creates the per-op statistics, scratch buffers, compiled
   kernels and channels_last state, none of which may be allocated during capture);
3. the next frame is captured into one CUDA graph — on the CUDA backend's own stream,
   or a side stream for the reference backend — and replayed to compute it;
4. every later frame copies its inputs into the captured input buffers, replays the
   graph, and returns copies of the captured outputs.

The graph bakes in every op's threshold, Sparsify dilation and statistics switch: when
one of them changes, the next frame is captured anew. A frame whose inputs differ in
structure, shape, dtype or device from the captured one raises
:class:`~deltaconvert.errors.SequenceMismatch` (call ``model.reset()`` first).
``model.reset()`` (and moving or casting the model) drops the graph.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from .delta import map_tensor_leaves, tensor_leaves
from .errors import SequenceMismatch

if TYPE_CHECKING:
    from .model import DeltaGraphModule


def _signature(args: tuple, kwargs: dict) -> Any:
    return map_tensor_leaves((args, kwargs), lambda t: ("tensor", tuple(t.shape), t.dtype, t.device))


def _settings(ops: list) -> tuple:
    return tuple((op.threshold, getattr(op, "dilation", None), op.track_stats) for op in ops)


class CapturedFrame:
    """One captured delta frame: static inputs, the graph, and its outputs."""

    def __init__(self, model: "DeltaGraphModule", args: tuple, kwargs: dict) -> None:
        leaves = list(tensor_leaves((args, kwargs)))
        if not leaves or any(not isinstance(t, torch.Tensor) or t.device.type != "cuda"
                             for t in leaves):
            raise ValueError("cuda_graph=True needs the model inputs on a CUDA device")
        self.ops = list(model.delta_ops().values())
        self.settings = _settings(self.ops)
        self.signature = _signature(args, kwargs)
        self.static_args, self.static_kwargs = map_tensor_leaves((args, kwargs), torch.clone)
        self.static_inputs = list(tensor_leaves((self.static_args, self.static_kwargs)))
        stream = None
        if model.active_backend == "cuda":
            from .backends.cuda import capture_stream
            stream = capture_stream(leaves[0].device)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, stream=stream, capture_error_mode="thread_local"):
            self.outputs = model._run_frame(*self.static_args, **self.static_kwargs)

    def current(self) -> bool:
        """Whether the thresholds and switches baked into the graph still hold."""
        return _settings(self.ops) == self.settings

    def replay(self, model: "DeltaGraphModule", args: tuple, kwargs: dict) -> Any:
        if _signature(args, kwargs) != self.signature:
            raise SequenceMismatch(
                "this frame does not continue the captured sequence (the structure, shape, "
                "dtype or device of the inputs changed). Call model.reset() to start a new "
                "sequence with the new input.")
        with model._runtime.frame():
            for static, new in zip(self.static_inputs, tensor_leaves((args, kwargs))):
                static.copy_(new)
            self.graph.replay()
            return map_tensor_leaves(self.outputs, torch.clone)


@dataclass
class GraphState:
    """Per-sequence progress of the graph mode (see the module docstring)."""

    eager_delta_frames: int = 0
    captured: CapturedFrame | None = field(default=None)


def graph_frame(model: "DeltaGraphModule", args: tuple, kwargs: dict) -> Any:
    """Run one delta frame of ``model`` in graph mode (the model's ``__call__`` calls this
    for every frame after the first of a sequence)."""
    state = model._cuda_graph_state
    if state is None:
        state = model._cuda_graph_state = GraphState()
    if state.eager_delta_frames < 1:
        out = model._run_frame(*args, **kwargs)
        state.eager_delta_frames += 1
        return out
    if state.captured is None or not state.captured.current():
        state.captured = None  # free the old graph's memory before capturing anew
        state.captured = CapturedFrame(model, args, kwargs)
    return state.captured.replay(model, args, kwargs)
