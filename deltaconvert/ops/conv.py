"""Ops with weights: convolution, transposed convolution, fully connected, and
batch-norm as a per-channel scale.

Each is affine: ``y = W x + b``. The first frame computes ``W x + b``; later frames
send ``W δ`` (the bias lives in the first frame's values). Each op wraps a private
copy of the PyTorch module, so padding modes, ``padding="same"`` and groups behave
exactly as in the original model.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..delta import Delta
from . import reference as ref
from .base import DeltaOp


class Conv2d(DeltaOp):
    """``y = conv(x) + b``; ``δy = conv(δ)``, updated where the kernel footprint
    (dilated, padded, strided) touches an updated input pixel."""

    # (weight's data pointer and version, the weight in channels_last) for NHWC inputs
    _nhwc_weight: tuple[tuple[int, int], torch.Tensor] | None = None

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = copy.deepcopy(conv)
        k = conv.kernel_size
        self.macs_per_pixel = conv.out_channels * (conv.in_channels // conv.groups) * k[0] * k[1]

    def dense(self, x: torch.Tensor, bias: bool = True) -> torch.Tensor:
        """``conv(x) + b`` (``bias=False``: ``conv(x)``, for a caller that adds ``b``
        in a kernel of its own)."""
        b = self.conv.bias if bias else None
        if x.is_cuda and x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(
                memory_format=torch.channels_last):
            # cuDNN would convert an NCHW weight for an NHWC input on every call (a
            # dense restart's inputs are NHWC, see Sparsify): keep the converted copy
            return self.conv._conv_forward(x, self._weight_for_nhwc(), b)
        return self.conv(x) if bias else self.conv._conv_forward(x, self.conv.weight, None)

    def _weight_for_nhwc(self) -> torch.Tensor:
        weight = self.conv.weight
        key = (weight.data_ptr(), weight._version)
        if self._nhwc_weight is None or self._nhwc_weight[0] != key:
            self._nhwc_weight = (key, weight.detach().contiguous(memory_format=torch.channels_last))
        return self._nhwc_weight[1]

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state.pop("_nhwc_weight", None)  # a cache of the weight
        return state

    def delta(self, d: Delta) -> Delta:
        conv = self.conv
        x = ref.masked(d)
        wide = ref.accumulation_dtype(x)
        values = conv._conv_forward(x.to(wide), conv.weight.to(wide), None).to(x.dtype)
        mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
        mask = ref.window_mask(d.mask, conv.kernel_size, conv.stride, conv.dilation,
                               conv._reversed_padding_repeated_twice, mode)
        return Delta(values, mask)


class ConvTranspose2d(DeltaOp):
    """``y = convᵀ(x) + b``; ``δy = convᵀ(δ)``, updated where an updated input pixel
    scatters to."""

    def __init__(self, conv: nn.ConvTranspose2d) -> None:
        super().__init__()
        self.conv = copy.deepcopy(conv)
        k = conv.kernel_size
        self.macs_per_pixel = (conv.in_channels * (conv.out_channels // conv.groups) * k[0] * k[1]
                               // (conv.stride[0] * conv.stride[1]))

    def dense(self, x: torch.Tensor, output_size=None) -> torch.Tensor:
        return self.conv(x, output_size)

    def delta(self, d: Delta, output_size=None) -> Delta:
        conv = self.conv
        output_padding = conv._output_padding(d.values, output_size, conv.stride, conv.padding,
                                              conv.kernel_size, 2, conv.dilation)
        x = ref.masked(d)
        wide = ref.accumulation_dtype(x)
        values = F.conv_transpose2d(x.to(wide), conv.weight.to(wide), None, conv.stride,
                                    conv.padding, output_padding, conv.groups,
                                    conv.dilation).to(x.dtype)
        mask = ref.transposed_window_mask(d.mask, conv.kernel_size, conv.stride, conv.padding,
                                          output_padding, conv.dilation)
        return Delta(values, mask)


class Linear(DeltaOp):
    """``y = W x + b`` on a ``(N, C)`` tensor (one pixel per sample); ``δy = W δ``."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.linear = copy.deepcopy(linear)
        self.macs_per_pixel = linear.in_features * linear.out_features

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)

    def delta(self, d: Delta) -> Delta:
        x = ref.masked(d)
        wide = ref.accumulation_dtype(x)
        return Delta(F.linear(x.to(wide), self.linear.weight.to(wide)).to(x.dtype), d.mask)


class ChannelScale(DeltaOp):
    """Batch-norm (inference) not folded into a conv: ``y = s·x + t`` per channel with
    ``s = γ/√(σ²+ε)``, ``t = β − s·μ``; ``δy = s·δ``."""

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm) -> None:
        super().__init__()
        scale = bn.weight.detach() if bn.affine else torch.ones_like(bn.running_var)
        scale = scale / torch.sqrt(bn.running_var + bn.eps)
        shift = (bn.bias.detach() if bn.affine else torch.zeros_like(scale)) - scale * bn.running_mean
        self.register_buffer("scale", scale.clone())
        self.register_buffer("shift", shift.clone())

    def _view(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return t.view(1, -1, *([1] * (like.dim() - 2))).to(like.dtype)

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        return x * self._view(self.scale, x) + self._view(self.shift, x)

    def delta(self, d: Delta) -> Delta:
        return Delta(ref.masked(d) * self._view(self.scale, d.values), d.mask)
