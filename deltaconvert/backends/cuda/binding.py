"""Which kernels run which op: ``bind(model, device)`` installs ``op.accelerated``.

Ops without kernels (and configurations the kernels reject at run time) keep the
reference math, run with torch ops on the backend stream.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from ...ops.base import DeltaOp
from ...ops.boundary import Densify, Sparsify
from ...ops.conv import ChannelScale, Conv2d, ConvTranspose2d
from ...ops.footprint import Footprint
from ...ops.linear import LinearCall
from ...ops.nonlinear import Nonlinear
from ..runtime import DeltaOpGraph
from .base import Accelerated
from .boundary import DensifyKernel, SparsifyKernel
from .cat import CAT_FNS, CatKernel
from .conv import ConvKernel
from .conv_transpose import ConvTransposeKernel
from .device import DeviceRuntime
from .fusion import fusion_pairs
from .pointwise import (
    ADD_FNS,
    MUL_FNS,
    NEG_FNS,
    SUB_FNS,
    LinearPointwise,
    Product,
    Truncating,
    pixel_function,
)
from .pooling import AvgPoolKernel, MaxPoolKernel
from .resize import ResizeKernel

_LINEAR_POINTWISE_FNS = (*ADD_FNS, *SUB_FNS, *NEG_FNS, *MUL_FNS)
_RESIZE = (nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d)


def _is(fn: object, group: tuple) -> bool:
    return any(fn is g for g in group)


def _consumer_wrapper(op: DeltaOp, runtime: DeviceRuntime) -> Accelerated | None:
    """Kernels for the ops that are never fused producers."""
    if isinstance(op, Sparsify):
        return SparsifyKernel(runtime)
    if isinstance(op, Densify):
        return DensifyKernel(runtime)
    if isinstance(op, Nonlinear):
        if op.footprint is Footprint.POINTWISE:
            if op.varying == (True,):
                function = pixel_function(op.fn)
                return Truncating(runtime, function) if function is not None else None
            if op.varying == (True, True) and _is(op.fn, MUL_FNS):
                return Product(runtime)
            return None
        if type(op.fn) is nn.MaxPool2d and not op.fn.return_indices:
            return MaxPoolKernel(runtime)
        return None
    if isinstance(op, LinearCall):
        fn = op.fn
        if type(fn) in (nn.AvgPool2d, nn.AdaptiveAvgPool2d):
            return AvgPoolKernel(runtime)
        if fn is F.interpolate or type(fn) in _RESIZE:
            return ResizeKernel(runtime)
        if _is(fn, CAT_FNS):
            return CatKernel(runtime)
    return None


def wrapper_for(op: DeltaOp, runtime: DeviceRuntime,
                consumer: tuple[DeltaOp, Accelerated] | None = None) -> Accelerated | None:
    """The wrapper running ``op`` on the kernels (None: reference math). ``consumer``: the
    op and wrapper a linear producer hands its work to (see :mod:`.fusion`)."""
    if isinstance(op, Conv2d):
        return ConvKernel(runtime, consumer)
    if isinstance(op, ConvTranspose2d):
        return ConvTransposeKernel(runtime)
    if isinstance(op, ChannelScale) or (
            isinstance(op, LinearCall) and _is(op.fn, _LINEAR_POINTWISE_FNS)):
        return LinearPointwise(runtime, consumer)
    return _consumer_wrapper(op, runtime)


def accelerate(model: DeltaOpGraph, runtime: DeviceRuntime) -> dict[str, Accelerated]:
    """The wrapper of every op the kernels run, by op name (installed on the ops)."""
    ops = model.delta_ops()
    wrappers = {name: wrapper_for(op, runtime) for name, op in ops.items()}
    for producer, consumer in fusion_pairs(model).items():
        if isinstance(wrappers.get(consumer), Truncating) and wrappers.get(producer) is not None:
            wrappers[producer] = wrapper_for(ops[producer], runtime,
                                             (ops[consumer], wrappers[consumer]))
    for name, op in ops.items():
        op.accelerated = wrappers[name]
    return {name: w for name, w in wrappers.items() if w is not None}
