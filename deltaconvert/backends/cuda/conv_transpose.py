"""ConvTranspose2d on the CUDA backend, as the convolution it is the adjoint of.

With stride ``s``, padding ``p``, dilation ``d``, kernel ``k``, output padding ``q`` and
groups ``g``::

    convᵀ(δ; W) = conv(U_s δ; W', stride 1, dilation d,
                       padding d·(k−1) − p before, d·(k−1) − p + q after)

where ``U_s`` puts the input pixels ``s`` apart (the pixels in between are not updated:
their mask is False, so the conv kernel never reads them) and ``W'`` is ``W`` with input
and output channels swapped within each group and the kernel flipped. The update mask
comes out of the conv kernel as the footprint of the spread-out input mask, which is the
set of output pixels an updated input pixel scatters to. Configurations with
``p > d·(k−1)`` (negative equivalent padding) or non-zero padding modes run the
reference math.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ...delta import Delta
from ...ops.base import DeltaOp
from ...ops.conv import ConvTranspose2d
from .base import Accelerated, Consumer
from .conv import ConvKernel
from .device import DeviceRuntime
from .registry import accelerates


@dataclass
class _AdjointConv:
    """The attributes of an ``nn.Conv2d`` that :class:`ConvKernel` reads."""

    weight: torch.Tensor
    groups: int
    dilation: tuple[int, int]
    _reversed_padding_repeated_twice: list[int]  # left, right, top, bottom
    stride: tuple[int, int] = (1, 1)
    padding_mode: str = "zeros"


def adjoint_weight(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """``W'``: ``(Cin, Cout_g, kh, kw)`` → ``(Cout, Cin_g, kh, kw)``, kernel flipped."""
    cin, cout_g, kh, kw = weight.shape
    w = weight.detach().reshape(groups, cin // groups, cout_g, kh, kw).transpose(1, 2)
    return w.reshape(groups * cout_g, cin // groups, kh, kw).flip(-1, -2).contiguous()


def adjoint_padding(conv: nn.ConvTranspose2d, output_padding: tuple[int, int]) -> list[int] | None:
    """(left, right, top, bottom) of the adjoint conv, or None where one is negative."""
    (kh, kw), (dh, dw), (ph, pw) = conv.kernel_size, conv.dilation, conv.padding
    top, left = dh * (kh - 1) - ph, dw * (kw - 1) - pw
    pads = [left, left + output_padding[1], top, top + output_padding[0]]
    return pads if min(pads) >= 0 else None


def spread(d: Delta, stride: tuple[int, int]) -> Delta:
    """``U_s δ``: the delta's pixels ``stride`` apart; only they are marked updated."""
    n, c, h, w = d.shape
    sh, sw = stride
    size = (n, c, (h - 1) * sh + 1, (w - 1) * sw + 1)
    channels_last = d.values.is_contiguous(memory_format=torch.channels_last)
    values = torch.empty(size, dtype=d.dtype, device=d.device, memory_format=(
        torch.channels_last if channels_last else torch.contiguous_format))
    values[:, :, ::sh, ::sw] = d.values
    mask = torch.zeros((n, 1, *size[2:]), dtype=torch.bool, device=d.device)
    mask[:, :, ::sh, ::sw] = d.mask
    return Delta(values, mask)


@accelerates(ConvTranspose2d)
class ConvTransposeKernel(Accelerated):
    """``op.accelerated`` of a ConvTranspose2d (see the module docstring)."""

    def __init__(self, runtime: DeviceRuntime, op: DeltaOp, consumer: Consumer | None = None) -> None:
        super().__init__(runtime, op, consumer)
        self.conv = ConvKernel(runtime, op)
        self._weight: tuple[tuple, torch.Tensor] | None = None

    def weight(self, conv: nn.ConvTranspose2d) -> torch.Tensor:
        w = conv.weight
        key = (w.data_ptr(), w._version, w.dtype, conv.groups)
        if self._weight is None or self._weight[0] != key:
            self._weight = (key, adjoint_weight(w, conv.groups))
        return self._weight[1]

    def run(self, op: DeltaOp, *args: Any, **kwargs: Any) -> Any:
        conv = op.conv
        if len(args) != 1 or not isinstance(args[0], Delta) or conv.padding_mode != "zeros":
            return NotImplemented
        d = args[0]
        if d.dim() != 4 or not self.usable(d) or conv.weight.dtype != d.dtype:
            return NotImplemented
        output_padding = conv._output_padding(d.values, kwargs.get("output_size"), conv.stride,
                                              conv.padding, conv.kernel_size, 2, conv.dilation)
        pads = adjoint_padding(conv, tuple(output_padding))
        if pads is None:
            return NotImplemented
        adjoint = _AdjointConv(self.weight(conv), conv.groups, tuple(conv.dilation), pads)
        return self.conv.convolve(adjoint, op, spread(d, conv.stride))
