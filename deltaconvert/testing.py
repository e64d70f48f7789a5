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
