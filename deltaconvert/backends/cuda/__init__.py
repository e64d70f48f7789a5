"""CUDA backend: PyCUDA-compiled delta kernels (see docs/ARCHITECTURE.md).

``bind(model, device)`` attaches kernels to the ops of a converted model and returns
the :class:`~deltaconvert.backends.runtime.Runtime` whose ``frame()`` runs each forward
on the backend's own stream. Nothing here imports PyCUDA until it is used, so CPU-only
installs keep working on the reference math.

Modules: ``errors`` (requirements and fixes), ``device`` (context, stream, frame),
``kernels`` (compile cache, launch checks), ``tensors`` (layout), ``arena`` (memory
zeroed once per frame), ``dense_layers`` (convs recomputed by cuDNN where most of
their output changes), ``worklist`` (pixel work lists), ``output_lists`` (a
truncation listing its consumer convs' outputs), ``dependent_launch``
(programmatic dependent launches), ``frame_skip`` (replays that skip an unchanged
frame), one wrapper module
per kernel family (``boundary``, ``pointwise``, ``conv``, ``pooling``, ``resize``,
``cat``), ``fusion`` (epilogue-fusion plan) and ``binding`` (op → wrapper).
"""
from __future__ import annotations

import torch

from ..runtime import DeltaOpGraph, Runtime
from .errors import unavailable_reason
from .tensors import poison_outputs

__all__ = ["bind", "poison_outputs", "unavailable_reason"]


def bind(model: DeltaOpGraph, device: torch.device, dtype: torch.dtype) -> Runtime:
    """Install the kernels on ``model``'s ops for a sequence on ``device`` whose inputs
    have ``dtype``; the kernels for that dtype are loaded before the first frame."""
    from ...ops.boundary import Sparsify
    from . import frame_skip
    from .arena import FrameArena
    from .binding import accelerate, dense_add_sources
    from .conv import ConvKernel
    from .dense_layers import DenseLayerPlan, add_kind
    from .device import device_runtime
    from .kernels import SUPPORTED_DTYPES, load_all
    from .tensors import full_mask

    runtime = device_runtime(device)
    full_mask((1, 1, 1, 1), runtime.device)  # made now: a first fill inside a capture would replay
    arena = FrameArena(runtime.device, len(model.delta_ops()))
    wrappers = accelerate(model, runtime, arena)
    plan = DenseLayerPlan(runtime, [op for op in model.delta_ops().values()
                                    if isinstance(op, Sparsify)])
    for wrapper in wrappers.values():
        if isinstance(wrapper, ConvKernel):
            wrapper.plan = plan
    for name, convs in dense_add_sources(model, wrappers).items():
        wrappers[name].plan = plan
        wrappers[name].kind = add_kind([conv.kind for conv in convs])
        for conv in convs:  # a link one way only: no cycle outlives the sequence
            conv.feeds = wrappers[name]

    def begin_frame() -> None:
        plan.resolve()  # after the sequence's first delta frame (eager: not capturing)
        arena.begin_frame()

    extra = {}
    if dtype in SUPPORTED_DTYPES:
        load_all(runtime, dtype)
        skip = frame_skip.FrameSkip(runtime, arena, dtype) if frame_skip.ENABLED else None
        if skip is not None and frame_skip.install(model, wrappers, skip):
            extra["capture_body"] = skip.capture
    return Runtime("cuda", frame=runtime.frame, capture_stream=runtime.torch_stream,
                   begin_frame=begin_frame, prepare_capture=lambda: not plan.resolve(),
                   restore_state=plan.restore, **extra)
