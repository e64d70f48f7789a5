"""Pooling on the CUDA backend (kernels: ``cuda_kernels/pool.cu``).

* :class:`MaxPoolKernel` — ``nn.MaxPool2d`` (a Nonlinear op): ``a += δx``, then each
  output pixel whose window saw an update is recomputed from ``a`` and truncated; its
  sent values hand on as the output's ``total``, as a truncation's do.
* :class:`AvgPoolKernel` — ``nn.AvgPool2d`` and ``nn.AdaptiveAvgPool2d`` (linear):
  the pool of the masked deltas. A 1×1 adaptive output (global pooling) sums only the
  updated pixels, in blocks that skip inactive parts of the frame, into a scratch that
  the finishing kernel turns into the mean and re-zeroes.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.modules.utils import _pair

from ...delta import Delta
from ...ops.base import DeltaOp
from ...ops.linear import LinearCall
from ...ops.nonlinear import Nonlinear
from .base import Accelerated, Consumer
from .constants import BLOCK, GLOBAL_PIXELS, PoolMode
from .device import DeviceRuntime
from .kernels import Args, kernel
from .pointwise import accumulate, nhwc_state
from .registry import accelerates
from .tensors import lanes_for, new_mask, new_values, pixel_grid, strides4


def output_shape(fn: nn.Module, shape: torch.Size, dtype: torch.dtype) -> tuple[int, ...]:
    """The module's output shape for an input of ``shape`` (evaluated on the meta device)."""
    return tuple(fn(torch.empty(shape, dtype=dtype, device="meta")).shape)


def pool_window(runtime: DeviceRuntime, op: DeltaOp, mode: int, d: Delta,
                out_shape: tuple[int, ...], window: tuple[int, ...], avg: tuple[int, int],
                acc: torch.Tensor | None, sent: torch.Tensor | None, threshold: float) -> Delta:
    """One ``pool_window`` launch for ``op``; ``window`` = (KH, KW, sh, sw, ph, pw, dh, dw).
    The kernel counts the output mask into the op's update counter."""
    n, c, h, w = d.shape
    oh, ow = out_shape[2], out_shape[3]
    out, om = new_values(out_shape, d.dtype, runtime.device), new_mask(out_shape, runtime.device)
    lanes = lanes_for(c)
    args = Args(op.node_name).ints(n, c, h, w, oh, ow, lanes, mode, *window, *avg)
    args.tensor(d.values, strides4(d.values)).mask(d.mask, d.shape)
    args.tensor(acc, strides4(acc) if acc is not None else (0, 0, 0, 0))
    args.tensor(sent, strides4(sent) if sent is not None else (0, 0, 0, 0)).floats(threshold)
    counter = op.counter_for_kernel()
    args.tensor(out, strides4(out)).ptr(om).ptr(counter)
    grid, block = pixel_grid(n * oh * ow, lanes)
    kernel(runtime, "pool", "pool_window", d.dtype)(grid, block, args)
    return Delta(out, om, op.counted_extras(counter))


@accelerates(Nonlinear, when=lambda op: type(op.fn) is nn.MaxPool2d and not op.fn.return_indices)
class MaxPoolKernel(Accelerated):
    """``op.accelerated`` of a Nonlinear op wrapping ``nn.MaxPool2d``."""

    total_state = "sent"

    def run(self, op: DeltaOp, *args: Any, **kwargs: Any) -> Any:
        fn = op.fn
        if len(args) != 1 or kwargs or not isinstance(args[0], Delta):
            return NotImplemented
        d = args[0]
        if (d.dim() != 4 or not self.usable(d)
                or not self.nonlinear_state(op.state["acc"], op.state["sent"], d.dtype)):
            return NotImplemented
        acc, sent = nhwc_state(op)
        accumulate(self.runtime, op.node_name, d, acc[0])
        kh, kw = _pair(fn.kernel_size)
        sh, sw = _pair(fn.stride if fn.stride is not None else fn.kernel_size)
        ph, pw = _pair(fn.padding)
        dh, dw = _pair(fn.dilation)
        out = pool_window(self.runtime, op, PoolMode.MAX, d, tuple(sent.shape),
                          (kh, kw, sh, sw, ph, pw, dh, dw), (0, 0), acc[0], sent, op.threshold)
        # Its sent values are the whole output its consumers have received, as a
        # truncation's are: a conv reading it may be a dense layer (dense_layers.py).
        return Delta(out.values, out.mask, {**out.extras, "total": sent})


@accelerates(LinearCall, when=lambda op: type(op.fn) in (nn.AvgPool2d, nn.AdaptiveAvgPool2d))
class AvgPoolKernel(Accelerated):
    """``op.accelerated`` of a LinearCall wrapping ``nn.AvgPool2d`` or
    ``nn.AdaptiveAvgPool2d``."""

    def __init__(self, runtime: DeviceRuntime, op: DeltaOp, consumer: Consumer | None = None) -> None:
        super().__init__(runtime, op, consumer)
        self.scratch: tuple[torch.Tensor, torch.Tensor] | None = None  # global-pool sums, flags

    def run(self, op: DeltaOp, *args: Any, **kwargs: Any) -> Any:
        fn = op.fn
        if len(args) != 1 or kwargs or not isinstance(args[0], Delta):
            return NotImplemented
        d = args[0]
        if d.dim() != 4 or not self.usable(d):
            return NotImplemented
        out_shape = output_shape(fn, d.shape, d.dtype)
        if isinstance(fn, nn.AdaptiveAvgPool2d):
            if out_shape[2:] == (1, 1):
                return self.global_pool(op, d)
            return pool_window(self.runtime, op, PoolMode.ADAPTIVE_AVG, d, out_shape,
                               (1,) * 8, (0, 0), None, None, 0.0)
        kh, kw = _pair(fn.kernel_size)
        sh, sw = _pair(fn.stride if fn.stride is not None else fn.kernel_size)
        ph, pw = _pair(fn.padding)
        avg = (int(fn.count_include_pad), int(fn.divisor_override or 0))
        return pool_window(self.runtime, op, PoolMode.AVG, d, out_shape,
                           (kh, kw, sh, sw, ph, pw, 1, 1), avg, None, None, 0.0)

    def global_pool(self, op: DeltaOp, d: Delta) -> Delta:
        n, c, h, w = d.shape
        device = self.runtime.device
        if self.scratch is None or self.scratch[0].shape != (n, c):
            self.scratch = (torch.zeros((n, c), dtype=torch.float32, device=device),
                            torch.zeros((n,), dtype=torch.int32, device=device))
        sums, flags = self.scratch
        out_shape = (n, c, 1, 1)
        out, om = new_values(out_shape, d.dtype, device), new_mask(out_shape, device)
        layer = op.node_name
        args = Args(layer).ints(c, h, w).tensor(d.values, strides4(d.values))
        args.mask(d.mask, d.shape).ptr(sums).ptr(flags)
        grid = (-(-(h * w) // GLOBAL_PIXELS), -(-c // 32), n)
        kernel(self.runtime, "pool", "pool_global_sum", d.dtype)(grid, (32, 8, 1), args)
        out_strides = strides4(out)
        args = Args(layer).ints(c).floats(1.0 / (h * w)).ptr(sums).ptr(flags).ptr(out)
        counter = op.counter_for_kernel()
        args.ints(out_strides[0], out_strides[1]).ptr(om).ptr(counter)
        kernel(self.runtime, "pool", "pool_global_finish", d.dtype)((n, 1, 1), (BLOCK, 1, 1), args)
        return Delta(out, om, op.counted_extras(counter))
