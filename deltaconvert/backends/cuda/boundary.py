"""Sparsify and Densify on the CUDA backend (kernels: ``sparsify.cu``, ``pointwise.cu``).

Sparsify: ``δ = x − ref``, ``m = max_c|δ| > τ`` dilated by ``d`` pixels, ``ref += δ``
where ``m``. Without dilation one kernel does it all; with dilation a first kernel
writes the undilated mask into a scratch buffer kept for the sequence.

Densify: ``y += δ`` where updated, then a copy of ``y`` in the model dtype (the state
keeps the caller-visible layout of the first frame's output).
"""
from __future__ import annotations

from typing import Any

import torch

from ...delta import Delta
from ...ops import reference as ref
from ...ops.base import DeltaOp
from ...ops.boundary import Densify, Sparsify
from .base import Accelerated, Consumer
from .device import DeviceRuntime
from .kernels import Args, kernel
from .pointwise import accumulate
from .registry import accelerates
from .tensors import (
    as_nhwc,
    lanes_for,
    new_mask,
    new_values,
    pixel_grid,
    shape4,
    strides4,
)


@accelerates(Sparsify)
class SparsifyKernel(Accelerated):
    """``op.accelerated`` of a Sparsify.

    With the frame skip (:mod:`.frame_skip`), an input Sparsify adds the pixels it emits
    to ``changed`` (the arena's count) — its reference fallback adds 1 always — and
    the last one opens the skippable body of a captured frame (``frame_skip``).
    """

    changed: torch.Tensor | None = None
    frame_skip: Any = None  # a frame_skip.FrameSkip
    total_state = "ref"

    def __init__(self, runtime: DeviceRuntime, op: DeltaOp, consumer: Consumer | None = None) -> None:
        super().__init__(runtime, op, consumer)
        self.raw: torch.Tensor | None = None  # undilated mask scratch (dilation > 0)

    def __call__(self, op: DeltaOp, *args: Any, **kwargs: Any) -> Any:
        out = super().__call__(op, *args, **kwargs)
        if self.frame_skip is not None:
            self.frame_skip.open()
        return out

    def fallback(self, op: DeltaOp, x: torch.Tensor) -> Delta:
        if self.changed is not None:
            self.changed.fill_(1)  # no kernel tells whether a pixel changed: run the frame
        return ref.sparsify(x, op.state["ref"], op.threshold, op.dilation)

    def run(self, op: DeltaOp, x: torch.Tensor) -> Any:
        if not self.usable(x) or not self.fp32_state(op.state["ref"]):
            return NotImplemented
        state = op.state
        state["ref"] = reference = as_nhwc(state["ref"])
        layer = op.node_name
        n, c, h, w = shape4(x.shape)
        lanes = lanes_for(c)
        grid, block = pixel_grid(n * h * w, lanes)
        raw = None
        if op.dilation > 0:
            if self.raw is None or self.raw.shape != (n, 1, h, w):
                self.raw = torch.empty((n, 1, h, w), dtype=torch.bool, device=x.device)
            raw = self.raw
            args = Args(layer).ints(n, c, h, w, lanes).tensor(x, strides4(x))
            args.tensor(reference, strides4(reference)).floats(op.threshold).ptr(raw)
            kernel(self.runtime, "sparsify", "sparsify_mask", x.dtype)(grid, block, args)
        out, om = new_values(x.shape, x.dtype, x.device), new_mask(x.shape, x.device)
        args = Args(layer).ints(n, c, h, w, lanes).tensor(x, strides4(x))
        args.tensor(reference, strides4(reference)).floats(op.threshold).ptr(raw)
        # A READY gate (slots) clears mask rows after the kernel: the op counts then.
        counter = op.counter_for_kernel() if op.ready is None else None
        args.ints(op.dilation).tensor(out, strides4(out)).ptr(om).ptr(counter).ptr(self.changed)
        kernel(self.runtime, "sparsify", "sparsify_apply", x.dtype)(grid, block, args)
        # ``total``: the input the network has now seen (see truncate() in .pointwise)
        return Delta(out, om, {**op.counted_extras(counter), "total": reference})


@accelerates(Densify)
class DensifyKernel(Accelerated):
    """``op.accelerated`` of a Densify."""

    def run(self, op: DeltaOp, d: Any) -> Any:
        y = op.state["y"]
        if not isinstance(d, Delta) or not self.usable(d) or not self.fp32_state(y):
            return NotImplemented
        accumulate(self.runtime, op.node_name, d, y)
        return y.to(d.dtype, copy=True)
