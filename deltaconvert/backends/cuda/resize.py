"""Resizing on the CUDA backend (kernel: ``cuda_kernels/resize.cu``).

``F.interpolate`` / ``nn.Upsample`` / ``nn.UpsamplingNearest2d`` /
``nn.UpsamplingBilinear2d`` in modes nearest, nearest-exact and bilinear (no
antialiasing). The source-index scales are computed as torch computes them
(``area_pixel_compute_scale``): ``1/scale_factor`` when the scale factor is passed on to
the op, else ``in/out``; ``(in−1)/(out−1)`` with ``align_corners``.
"""
from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

from ...delta import Delta
from ...ops.base import DeltaOp
from ...ops.linear import LinearCall
from .base import Accelerated
from .constants import ResizeMode
from .kernels import Args, kernel
from .registry import accelerates
from .tensors import lanes_for, new_mask, new_values, pixel_grid, strides4

MODES = {"nearest": ResizeMode.NEAREST, "nearest-exact": ResizeMode.NEAREST_EXACT,
         "bilinear": ResizeMode.BILINEAR}
_INTERPOLATE = inspect.signature(F.interpolate)
_MODULES = (nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d)


def interpolate_call(fn: Any, args: tuple, kwargs: dict) -> dict | None:
    """The F.interpolate arguments of a resize call (None if ``fn`` is not one)."""
    if isinstance(fn, _MODULES):
        if len(args) != 1 or kwargs:
            return None
        return {"input": args[0], "size": fn.size, "scale_factor": fn.scale_factor,
                "mode": fn.mode, "align_corners": fn.align_corners,
                "recompute_scale_factor": fn.recompute_scale_factor, "antialias": False}
    if fn is not F.interpolate:
        return None
    bound = _INTERPOLATE.bind(*args, **kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


def source_scale(size_in: int, size_out: int, factor: float | None, align_corners: bool,
                 bilinear: bool) -> float:
    """torch's area_pixel_compute_scale, in float32."""
    if bilinear and align_corners:
        return float(np.float32(size_in - 1) / np.float32(size_out - 1)) if size_out > 1 else 0.0
    if factor is not None and factor > 0:
        return float(np.float32(1.0 / factor))
    return float(np.float32(size_in) / np.float32(size_out))


@accelerates(LinearCall, when=lambda op: op.fn is F.interpolate or type(op.fn) in _MODULES)
class ResizeKernel(Accelerated):
    """``op.accelerated`` of a LinearCall that resizes."""

    def run(self, op: DeltaOp, *args: Any, **kwargs: Any) -> Any:
        call = interpolate_call(op.fn, args, kwargs)
        if call is None:
            return NotImplemented
        d = call["input"]
        mode = call["mode"]
        if (not isinstance(d, Delta) or d.dim() != 4 or not self.usable(d) or mode not in MODES
                or call["antialias"]):
            return NotImplemented
        meta = dict(call, input=torch.empty(d.shape, dtype=d.dtype, device="meta"))
        out_shape = tuple(F.interpolate(**meta).shape)
        factors: tuple[float | None, float | None] = (None, None)
        if call["size"] is None and not call["recompute_scale_factor"]:
            factors = tuple(float(f) for f in _pair(call["scale_factor"]))  # type: ignore[assignment]
        bilinear = mode == "bilinear"
        align = bool(call["align_corners"]) if bilinear else False
        n, c, h, w = d.shape
        oh, ow = out_shape[2], out_shape[3]
        rh = source_scale(h, oh, factors[0], align, bilinear)
        rw = source_scale(w, ow, factors[1], align, bilinear)
        out, om = new_values(out_shape, d.dtype, d.device), new_mask(out_shape, d.device)
        lanes = lanes_for(c)
        a = Args(op.node_name).ints(n, c, h, w, oh, ow, lanes, MODES[mode], int(align))
        a.floats(rh, rw).tensor(d.values, strides4(d.values)).mask(d.mask, d.shape)
        counter = op.counter_for_kernel()
        a.tensor(out, strides4(out)).ptr(om).ptr(counter)
        grid, block = pixel_grid(n * oh * ow, lanes)
        kernel(self.runtime, "resize", "resize", d.dtype)(grid, block, a)
        return Delta(out, om, op.counted_extras(counter))
