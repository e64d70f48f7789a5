"""Registry entries: the delta form of each supported PyTorch op.

Each handler receives a :class:`~deltaconvert.registry.CallSite` after normalisation
(functional activations and pools are modules by then, batch-norms after convs are
folded) and returns the delta op, or raises :class:`UnsupportedOp` with the reason the
call must run dense.
"""
from __future__ import annotations

import copy
import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from .errors import UnsupportedOp
from .graph.analysis import value_info
from .graph.registry import CallSite, register_delta_op
from .layers import ChannelGroupSoftmax, ChannelLayerNorm
from .ops import conv as conv_ops
from .ops.base import DeltaOp
from .ops.footprint import Footprint
from .ops.linear import ChannelGather, ConstantPad, LinearCall
from .ops.nonlinear import Nonlinear

POINTWISE_ACTIVATIONS = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardtanh, nn.Sigmoid, nn.SiLU, nn.Hardswish,
    nn.Hardsigmoid, nn.GELU, nn.Tanh, nn.ELU, nn.CELU, nn.SELU, nn.PReLU, nn.Softplus,
    nn.Mish, nn.Softsign, nn.Tanhshrink, nn.LogSigmoid, nn.Hardshrink, nn.Softshrink,
    nn.Threshold, nn.RReLU,
)
ELEMENTWISE_FUNCTIONS = (
    torch.abs, torch.exp, torch.log, torch.sqrt, torch.rsqrt, torch.square, torch.sin,
    torch.cos, torch.clamp, torch.clip, torch.clamp_min, torch.clamp_max, torch.pow,
    torch.maximum, torch.minimum, torch.reciprocal, torch.erf,
    operator.pow, operator.abs, operator.floordiv, torch.floor_divide,
)
ELEMENTWISE_METHODS = (
    "abs", "exp", "log", "sqrt", "rsqrt", "square", "sin", "cos", "clamp", "clip",
    "clamp_min", "clamp_max", "pow", "maximum", "minimum", "reciprocal", "erf",
)


def _require_rank_at_least(site: CallSite, rank: int) -> None:
    if site.input_info().rank < rank:
        raise UnsupportedOp(f"needs a tensor of rank ≥ {rank}, got {site.input_info().shape}")


# -- ops with weights ---------------------------------------------------------------------
@register_delta_op(nn.Conv2d)
def conv2d(site: CallSite) -> conv_ops.Conv2d:
    _require_rank_at_least(site, 4)
    return conv_ops.Conv2d(site.target)


@register_delta_op(nn.ConvTranspose2d)
def conv_transpose2d(site: CallSite) -> conv_ops.ConvTranspose2d:
    _require_rank_at_least(site, 4)
    return conv_ops.ConvTranspose2d(site.target)


@register_delta_op(nn.Linear)
def linear(site: CallSite) -> conv_ops.Linear:
    if site.input_info().rank != 2:
        raise UnsupportedOp("nn.Linear on a tensor of rank > 2 mixes pixels along the last "
                            "dim; only (N, C) inputs have a delta form")
    return conv_ops.Linear(site.target)


@register_delta_op(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
def batch_norm(site: CallSite) -> conv_ops.ChannelScale:
    bn = site.target
    if bn.running_mean is None or bn.running_var is None:
        raise UnsupportedOp("batch-norm without running statistics normalises each frame "
                            "with its own statistics (a spatial reduction)")
    return conv_ops.ChannelScale(bn)


# -- non-linear per-pixel ops ---------------------------------------------------------------
@register_delta_op(*POINTWISE_ACTIVATIONS, ChannelLayerNorm, ChannelGroupSoftmax)
def pointwise_module(site: CallSite) -> Nonlinear:
    return Nonlinear(copy.deepcopy(site.target), Footprint.POINTWISE, site.varying)


@register_delta_op(nn.LayerNorm)
def layer_norm(site: CallSite) -> Nonlinear:
    if site.input_info().rank != 2 or len(site.target.normalized_shape) != 1:
        raise UnsupportedOp("LayerNorm over spatial dims mixes pixels; only a norm over the "
                            "channels of each pixel has a delta form")
    return Nonlinear(copy.deepcopy(site.target), Footprint.POINTWISE, site.varying)


@register_delta_op(nn.Softmax, nn.LogSoftmax)
def softmax(site: CallSite) -> Nonlinear:
    rank = site.input_info().rank
    if site.target.dim is None or site.target.dim % rank != 1:
        raise UnsupportedOp("softmax over a spatial dim mixes pixels; only a softmax over "
                            "channels (dim=1) has a delta form")
    return Nonlinear(copy.deepcopy(site.target), Footprint.POINTWISE, site.varying)


@register_delta_op(*ELEMENTWISE_FUNCTIONS, *ELEMENTWISE_METHODS)
def elementwise(site: CallSite) -> Nonlinear:
    return Nonlinear(site.fn, Footprint.POINTWISE, site.varying)


@register_delta_op(F.normalize)
def normalize(site: CallSite) -> Nonlinear:
    dim = site.constant(2, "dim", 1)
    if dim % site.input_info().rank != 1:
        raise UnsupportedOp("F.normalize over a spatial dim mixes pixels")
    return Nonlinear(site.fn, Footprint.POINTWISE, site.varying)


# -- arithmetic ----------------------------------------------------------------------------
@register_delta_op(operator.add, operator.sub, torch.add, torch.sub, "add", "sub",
                   operator.neg, torch.neg, "neg")
def add_sub(site: CallSite) -> LinearCall:
    return LinearCall(site.fn, Footprint.POINTWISE, affine=True)


@register_delta_op(operator.mul, torch.mul, "mul")
def multiply(site: CallSite) -> LinearCall | Nonlinear:
    if sum(site.varying) > 1:
        return Nonlinear(site.fn, Footprint.POINTWISE, site.varying)
    return LinearCall(site.fn, Footprint.POINTWISE)


@register_delta_op(operator.truediv, torch.div, "div")
def divide(site: CallSite) -> LinearCall | Nonlinear:
    divisor = site.arg(1, "other")
    varying_divisor = isinstance(divisor, fx.Node) and value_info(divisor).varying
    if varying_divisor or site.node.kwargs.get("rounding_mode") is not None:
        return Nonlinear(site.fn, Footprint.POINTWISE, site.varying)
    return LinearCall(site.fn, Footprint.POINTWISE)


# -- pooling, resizing, padding -------------------------------------------------------------
@register_delta_op(nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d,
                   nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
def max_pool(site: CallSite) -> Nonlinear:
    if getattr(site.target, "return_indices", False):
        raise UnsupportedOp("max pooling with return_indices")
    return Nonlinear(copy.deepcopy(site.target), Footprint.REAPPLY, site.varying)


@register_delta_op(nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d,
                   nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
def avg_pool(site: CallSite) -> LinearCall:
    return LinearCall(copy.deepcopy(site.target), Footprint.REAPPLY)


_LINEAR_RESIZE_MODES = {"nearest", "nearest-exact", "linear", "bilinear", "trilinear", "area"}


@register_delta_op(F.interpolate, nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d)
def interpolate(site: CallSite) -> LinearCall:
    mode = site.target.mode if isinstance(site.target, nn.Module) else site.constant(3, "mode", "nearest")
    if mode not in _LINEAR_RESIZE_MODES:
        raise UnsupportedOp(f"resizing with mode={mode!r} has negative weights; supported: "
                            f"{sorted(_LINEAR_RESIZE_MODES)}")
    fn = copy.deepcopy(site.target) if isinstance(site.target, nn.Module) else site.fn
    return LinearCall(fn, Footprint.REAPPLY)


def _padding(site: CallSite, pads: Any, value: Any) -> LinearCall | ConstantPad:
    """Zero padding is linear (the op on the deltas); padding with a constant ``c ≠ 0``
    is affine (:class:`ConstantPad`: the border's change is zero)."""
    fn = copy.deepcopy(site.target) if isinstance(site.target, nn.Module) else site.fn
    if value in (None, 0, 0.0):
        return LinearCall(fn, Footprint.REAPPLY)
    if len(pads) > 2 * (site.input_info().rank - 1):
        raise UnsupportedOp("padding the batch dim (streams)")
    return ConstantPad(fn, pads)


@register_delta_op(nn.ZeroPad2d, nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReplicationPad1d,
                   nn.ReplicationPad2d, nn.ConstantPad1d, nn.ConstantPad2d)
def pad_module(site: CallSite) -> LinearCall | ConstantPad:
    return _padding(site, site.target.padding, getattr(site.target, "value", 0))


@register_delta_op(F.pad)
def pad_function(site: CallSite) -> LinearCall | ConstantPad:
    if site.constant(2, "mode", "constant") != "constant":
        return LinearCall(site.fn, Footprint.REAPPLY)
    return _padding(site, site.constant(1, "pad"), site.constant(3, "value", None))


# -- channel and shape plumbing ---------------------------------------------------------------
@register_delta_op(torch.cat, torch.concat, torch.concatenate)
def cat(site: CallSite) -> LinearCall:
    dim = site.constant(1, "dim", 0)
    if dim % site.out.rank == 0:
        raise UnsupportedOp("concatenation along the batch dim mixes streams")
    return LinearCall(site.fn, Footprint.REAPPLY)


@register_delta_op(torch.flatten, "flatten", nn.Flatten)
def flatten(site: CallSite) -> LinearCall:
    start = site.target.start_dim if isinstance(site.target, nn.Module) else site.constant(1, "start_dim", 0)
    if start % site.input_info().rank == 0:
        raise UnsupportedOp("flatten from dim 0 merges the batch (streams)")
    fn = copy.deepcopy(site.target) if isinstance(site.target, nn.Module) else site.fn
    return LinearCall(fn, Footprint.REAPPLY)


@register_delta_op(torch.unflatten, "unflatten")
def unflatten(site: CallSite) -> LinearCall:
    if site.constant(1, "dim", 0) % site.input_info().rank == 0:
        raise UnsupportedOp("unflatten of the batch dim")
    return LinearCall(site.fn, Footprint.REAPPLY_EXPANDED)


_REARRANGEMENTS = (
    "view", "reshape", "transpose", "permute", "movedim", "swapaxes", "swapdims", "squeeze",
    "unsqueeze", "view_as", "reshape_as", torch.reshape, torch.transpose, torch.permute,
    torch.movedim, torch.swapaxes, torch.squeeze, torch.unsqueeze,
)


@register_delta_op(*_REARRANGEMENTS)
def rearrangement(site: CallSite) -> DeltaOp:
    """Rearrangements left after normalisation (rearrangement_chain_to_canonical_op turns
    channel gathers, flatten and one-pixel reshapes into delta ops) move pixels out of
    or into the spatial dims of an (N, C, *pixels) map, whose update flags are per pixel."""
    raise UnsupportedOp(f"rearranges {site.input_info().shape} into {site.out.shape}, moving "
                        "elements between the channel and pixel dims; only channel gathers, "
                        "flatten and one-pixel reshapes have a delta form")


@register_delta_op(operator.matmul, torch.matmul, "matmul", torch.bmm, "bmm")
def matmul(site: CallSite) -> DeltaOp:
    """Matrix products contract the last dims of a map, i.e. mix its pixels."""
    if all(site.varying):
        raise UnsupportedOp("a product of two varying tensors contracted over pixels (attention's "
                            "q·kᵀ or attention·v): every output depends on every pixel")
    raise UnsupportedOp("a matrix product over the last dims mixes pixels; per-pixel linear maps "
                        "are 1×1 convolutions or nn.Linear on (N, C)")


@register_delta_op(ChannelGather)
def channel_gather(site: CallSite) -> ChannelGather:
    return copy.deepcopy(site.target)


@register_delta_op(operator.getitem)
def getitem(site: CallSite) -> LinearCall:
    index = site.constant(1, "index")
    items = index if isinstance(index, tuple) else (index,)
    if not items or items[0] != slice(None):
        raise UnsupportedOp("indexing that selects along the batch dim (streams)")
    if len(items) > 1 and not isinstance(items[1], slice):
        raise UnsupportedOp("integer index on the channel dim removes it")
    if any(item is None or item is Ellipsis or isinstance(item, torch.Tensor) for item in items):
        raise UnsupportedOp("indexing with None, Ellipsis or tensors")
    return LinearCall(site.fn, Footprint.REAPPLY_EXPANDED)


@register_delta_op(torch.chunk, torch.split, "chunk", "split")
def split(site: CallSite) -> LinearCall:
    dim = site.constant(2, "dim", 0)
    rank = site.input_info().rank
    if dim % rank == 0:
        raise UnsupportedOp("splitting along the batch dim")
    return LinearCall(site.fn, Footprint.CHANNELS if dim % rank == 1 else Footprint.REAPPLY)


@register_delta_op(torch.unbind, "unbind")
def unbind(site: CallSite) -> LinearCall:
    """``x.unbind(d)``: slices of ``x`` along ``d`` without that dim. Along a spatial dim the
    masks are unbound with the values; along the channels each item ``(N, *spatial)`` has
    the mask of its own layout ``(N, 1, *spatial[1:])``: the channel-expanded mask unbound
    and reduced over the item's dim 1 (a pixel is updated if any pixel of its column is)."""
    dim = site.constant(1, "dim", 0) % site.input_info().rank
    if dim == 0:
        raise UnsupportedOp("unbinding the batch dim (streams)")
    if dim == 1 and site.input_info().rank < 3:
        raise UnsupportedOp("unbinding the channels of an (N, C) tensor leaves no per-stream map")
    return LinearCall(site.fn, Footprint.REAPPLY_EXPANDED if dim == 1 else Footprint.REAPPLY)


def _reduces_channels_only(site: CallSite) -> bool:
    dims = site.constant(1, "dim")
    dims = tuple(dims) if isinstance(dims, (list, tuple)) else (dims,)
    rank = site.input_info().rank
    keepdim = site.constant(2, "keepdim", False)
    return rank >= 2 and keepdim is True and [d % rank for d in dims if d is not None] == [1]


@register_delta_op(torch.mean, torch.sum, "mean", "sum")
def channel_sum(site: CallSite) -> LinearCall:
    if not _reduces_channels_only(site):
        raise UnsupportedOp("only a reduction over the channels (dim=1, keepdim=True) keeps "
                            "pixels apart")
    return LinearCall(site.fn, Footprint.CHANNELS)


@register_delta_op(torch.amax, torch.amin, "amax", "amin")
def channel_extreme(site: CallSite) -> Nonlinear:
    if not _reduces_channels_only(site):
        raise UnsupportedOp("only a reduction over the channels (dim=1, keepdim=True) keeps "
                            "pixels apart")
    return Nonlinear(site.fn, Footprint.POINTWISE, site.varying)


@register_delta_op("float", "double", "half", "bfloat16", "to", "type_as", "contiguous")
def cast(site: CallSite) -> LinearCall:
    return LinearCall(site.fn, Footprint.CHANNELS)
