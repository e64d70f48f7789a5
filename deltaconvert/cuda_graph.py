"""CUDA-graph replay of a converted model's delta frames.

With ``model.cuda_graph = True`` (or ``convert(..., cuda_graph=True)``) the model hands
a :class:`CudaGraphReplay` its eager frame function, its backend runtime and a function
returning its ops' settings, and a sequence runs:

1. the dense first frame, eagerly (it creates every state buffer; the model does this
   before it builds the replay);
2. one eager delta frame (it creates the scratch buffers, compiled
   kernels and channels_last state, none of which may be allocated during capture),
   and one more wherever ``prepare_capture()`` then settles something (the CUDA
   backend's plan turns layers dense or delta: their buffers are laid out eagerly);
3. the next frame is captured into one CUDA graph — after the runtime's
   ``prepare_capture()`` (outside the capture: the CUDA backend settles its per-layer
   plan there, see ``backends/cuda/dense_layers.py``), on the runtime's capture stream
   (the CUDA backend's own stream), or a side stream for the reference math, inside the
   runtime's ``capture_body`` (the CUDA backend may make the part after the input
   boundaries skippable when no input changed, and capture the model's dense restart
   as the branch taken instead when most input pixels changed) — and replayed to
   compute it;
4. every later frame copies its inputs into the captured input buffers, replays the
   graph, and returns copies of the captured outputs, all on the caller's stream.

The graph bakes in every op's threshold, Sparsify dilation and statistics switch. They
are not compared every frame: assigning one of them advances
:func:`~deltaconvert.ops.base.settings_generation`, and only then are the settings
compared, and the next frame captured anew if they differ. A frame whose inputs differ in
structure, shape, dtype or device from the captured one raises
:class:`~deltaconvert.errors.SequenceMismatch` (call ``model.reset()`` first); the model
drops its replay on ``reset()`` (and when moved or cast).
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from .backends.runtime import Runtime
from .delta import map_tensor_leaves, tensor_leaves
from .errors import SequenceMismatch
from .ops.base import settings_generation


# (restart frame, eager restart): the model's dense restart, which a runtime's captured
# body may take as a branch (``takes_restart``); before such a capture the model restarts
# once, eagerly, at the captured frame (so no library's first call for the restart's
# shapes is captured), and the replay of that frame then finds nothing changed.
Restart = tuple[Callable[..., Any], Callable[..., None]]


def _signature(args: tuple, kwargs: dict) -> Any:
    return map_tensor_leaves((args, kwargs), lambda t: ("tensor", tuple(t.shape), t.dtype, t.device))


class CapturedFrame:
    """One captured delta frame: static inputs, the graph, and its outputs."""

    def __init__(self, run_frame: Callable[..., Any], runtime: Runtime, args: tuple,
                 kwargs: dict, restart: Restart | None = None) -> None:
        leaves = list(tensor_leaves((args, kwargs)))
        if not leaves or any(not isinstance(t, torch.Tensor) or t.device.type != "cuda"
                             for t in leaves):
            raise ValueError("cuda_graph=True needs the model inputs on a CUDA device")
        self.signature = _signature(args, kwargs)
        self.static_args, self.static_kwargs = map_tensor_leaves((args, kwargs), torch.clone)
        self.static_inputs = list(tensor_leaves((self.static_args, self.static_kwargs)))
        runtime.prepare_capture()
        self.graph = torch.cuda.CUDAGraph()
        pool = torch.cuda.graph_pool_handle()  # named up front: the body may route to it
        self.body = runtime.capture_body(self.graph, pool)
        if restart is not None and self.body.takes_restart:
            restart[1](*self.static_args, **self.static_kwargs)  # eagerly, see Restart
        try:
            with torch.cuda.graph(self.graph, pool=pool, stream=runtime.capture_stream,
                                  capture_error_mode="thread_local"):
                with self.body:
                    self.outputs = run_frame(*self.static_args, **self.static_kwargs)
                    if restart is not None:
                        self.body.capture_restart(
                            lambda: restart[0](*self.static_args, **self.static_kwargs),
                            self.outputs)
        except BaseException:
            self.body.abandon()  # what a failed capture leaves behind (see capture_body)
            raise

    def replay(self, args: tuple, kwargs: dict) -> Any:
        """Copy the inputs in, replay, return copies of the outputs — on the caller's
        current stream, with no join to the backend's: a graph launch holds every kernel
        of the frame, and the eager frames that also touch the model's state end with the
        caller's stream waiting for them (see the runtime's ``frame``). Calls from
        different streams are ordered by the model before they get here
        (:class:`~deltaconvert.stream_order.StreamOrder`)."""
        if _signature(args, kwargs) != self.signature:
            raise SequenceMismatch(
                "this frame does not continue the captured sequence (the structure, shape, "
                "dtype or device of the inputs changed). Call model.reset() to start a new "
                "sequence with the new input.")
        for static, new in zip(self.static_inputs, tensor_leaves((args, kwargs))):
            static.copy_(new)
        self.graph.replay()
        return map_tensor_leaves(self.outputs, torch.clone)


class CudaGraphReplay:
    """Graph-mode delta frames of one sequence (see the module docstring).

    ``run_frame(*args, **kwargs)`` runs one eager frame of the model; ``runtime`` is the
    backend bound to the sequence; ``settings()`` returns the settings a graph bakes in;
    ``restart`` is the model's dense restart, captured and eager (:data:`Restart`).
    """

    def __init__(self, run_frame: Callable[..., Any], runtime: Runtime,
                 settings: Callable[[], tuple], restart: Restart | None = None) -> None:
        self._run_frame = run_frame
        self._restart = restart
        self._runtime = runtime
        self._settings = settings
        self.eager_delta_frames = 0
        self.captured: CapturedFrame | None = None
        self._captured_settings: tuple | None = None
        self._generation = -1

    def _current(self) -> bool:
        """Whether the settings baked into the captured graph still hold."""
        generation = settings_generation()
        if generation == self._generation:
            return True
        self._generation = generation
        return self._settings() == self._captured_settings

    def invalidate(self) -> None:
        """State the captured frame reads was changed outside it (slot restarts): the
        next replay runs all of it (see the runtime's ``capture_body``)."""
        if self.captured is not None:
            self.captured.body.invalidate()

    def __call__(self, args: tuple, kwargs: dict) -> Any:
        if self.eager_delta_frames < 1 or (self.captured is None and not self._runtime.prepare_capture()):
            self.eager_delta_frames += 1
            return self._run_frame(*args, **kwargs)
        if self.captured is None or not self._current():
            self.captured = None  # free the old graph's memory before capturing anew
            self._captured_settings = self._settings()
            self._generation = settings_generation()
            self.captured = CapturedFrame(self._run_frame, self._runtime, args, kwargs,
                                          self._restart)
        return self.captured.replay(args, kwargs)
