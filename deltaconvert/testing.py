"""Helpers for checking converted models against their originals.

Random-init torchvision models are poor test subjects as built: with BatchNorm running
statistics at their defaults, some (GoogLeNet, DeepLabV3) produce outputs that do not
depend on the input at all, so any comparison passes. :func:`calibrate_batchnorm`
fixes that by estimating the statistics on real-looking frames.
"""
from __future__ import annotations

from typing import Any, Iterable

import torch
import torchvision
from torch import nn

SEGMENTATION_ARCHITECTURES = ("fcn_resnet50", "fcn_resnet101", "deeplabv3_resnet50",
                              "deeplabv3_resnet101", "deeplabv3_mobilenet_v3_large",
                              "lraspp_mobilenet_v3_large")


def build_torchvision(name: str, **kwargs: Any) -> nn.Module:
    """A torchvision classification or segmentation model by builder name, never
    downloading weights (``weights=None``)."""
    if name in SEGMENTATION_ARCHITECTURES:
        builder = getattr(torchvision.models.segmentation, name)
        return builder(weights=None, weights_backbone=None, **kwargs)
    try:
        builder = torchvision.models.get_model_builder(name)
    except ValueError:
        raise ValueError(f"unknown torchvision model {name!r}") from None
    if name in ("googlenet", "inception_v3"):
        kwargs.setdefault("aux_logits", False)
        kwargs.setdefault("init_weights", True)
    return builder(weights=None, **kwargs)


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, frames: Iterable[torch.Tensor]) -> nn.Module:
    """Set every BatchNorm's running statistics to the average over ``frames`` (in place),
    then return the model in eval mode."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average
    model.train()
    for frame in frames:
        model(frame)
    return model.eval()


def main_output(output: Any) -> torch.Tensor:
    """The tensor to compare: the output itself, or ``output["out"]`` of a segmentation
    model."""
    if isinstance(output, dict):
        return output["out"]
    if isinstance(output, (tuple, list)):
        return output[0]
    return output


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``‖actual − expected‖₂ / ‖expected‖₂`` computed in float64."""
    expected = expected.double()
    return float((actual.double() - expected).norm() / expected.norm().clamp_min(1e-30))


class SmallNet(nn.Module):
    """A small input-dependent CNN that converts in well under a second, for fast tests
    of everything around conversion (threshold files, save/load, tuning, heatmaps):
    conv+BN (folded), ReLU, max pool, a residual add, ReLU6 and a 1×1 head. Truncating
    ops: ``stem.2``, ``pool``, ``body.1``; ``head`` is a conv that can be forced dense."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.pool = nn.MaxPool2d(2)
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU6())
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.stem(x))
        return self.head(x + self.body(x))


def converted_small_net(**convert_kwargs: Any):
    """``convert(SmallNet())`` with seed-0 weights and a (1, 3, 24, 32) example input;
    dense-island warnings (e.g. a forced-dense ``head``) are silenced."""
    import warnings

    from .convert import DenseFallbackWarning, convert
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DenseFallbackWarning)
        return convert(SmallNet().eval(), torch.randn(1, 3, 24, 32), **convert_kwargs)
