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
