"""Plain modules that graph passes substitute for patterns of the original model."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ChannelLayerNorm(nn.Module):
    """LayerNorm over dim 1 of a ``(N, C, *spatial)`` tensor: the channels-first form
    of ``permute → nn.LayerNorm(C) → permute back`` (ConvNeXt). Per pixel:
    ``y = (x − mean_c x) / √(var_c x + ε) · γ + β``."""

    def __init__(self, layer_norm: nn.LayerNorm) -> None:
        super().__init__()
        (channels,) = layer_norm.normalized_shape
        self.eps = layer_norm.eps
        self.weight = None if layer_norm.weight is None else nn.Parameter(
            layer_norm.weight.detach().clone())
        self.bias = None if layer_norm.bias is None else nn.Parameter(
            layer_norm.bias.detach().clone())
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(x.movedim(1, -1), (self.channels,), self.weight, self.bias, self.eps)
        return y.movedim(-1, 1)


class ChannelGroupSoftmax(nn.Module):
    """Softmax across ``groups`` equal blocks of the channels, at each pixel: for ``C``
    channels and ``K = C / groups``,
    ``y[:, r·K + k] = exp(x[:, r·K + k]) / Σ_j exp(x[:, j·K + k])``. The channels-first
    form of a softmax over the radix dim of ``x.view(N, groups, K, *spatial)`` (split
    attention); like a softmax over channels, it mixes the channels of one pixel only."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(1, (self.groups, -1)).softmax(1).flatten(1, 2)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"
