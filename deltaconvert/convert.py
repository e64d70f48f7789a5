"""convert(): a stock PyTorch model → a stateful delta model, in one call.

The graph work is :func:`deltaconvert.graph.pipeline.lower_to_delta_graph`; this module
adds the user-facing parts: argument defaults, thresholds, the dense-island warning.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Union

import torch
from torch import nn

from . import handlers  # noqa: F401  (fills the op registry)
from .graph.pipeline import lower_to_delta_graph
from .model import DeltaGraphModule
from .sources import timm_data_config
from .thresholds import ThresholdConfig, load_thresholds
from .version import __version__

ThresholdSpec = Union[None, float, dict, str, Path, ThresholdConfig]


class DenseFallbackWarning(UserWarning):
    """Some ops have no delta form and run dense between a Densify and a Sparsify."""


def default_example_input(model: nn.Module) -> torch.Tensor:
    """``(1, C, 224, 224)`` random input, C from the model's first 2-D convolution."""
    param = next(model.parameters(), None)
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return torch.randn(1, module.in_channels, 224, 224,
                               device=param.device if param is not None else None,
                               dtype=param.dtype if param is not None else None)
    raise ValueError("cannot guess an input shape for a model without Conv2d: pass "
                     "example_input=torch.randn(...) to convert()")


def convert(model: nn.Module, example_input: torch.Tensor | tuple | None = None, *,
            thresholds: ThresholdSpec = None, backend: str = "auto",
            architecture: str | None = None, cuda_graph: bool = False) -> DeltaGraphModule:
    """Convert ``model`` into a delta model (the caller's model is not modified).

    Args:
        model: any fx-traceable ``nn.Module``; it is copied and put in eval mode.
        example_input: one input (or a tuple of inputs) used to trace shapes; by default
            a random ``(1, C, 224, 224)`` image.
        thresholds: ``None`` (all 0: exact), a float (default for every layer), a dict or
            :class:`ThresholdConfig`, or a path to a YAML file (see README).
        backend: ``"auto"`` (CUDA kernels for CUDA inputs when available, else the
            reference backend), ``"reference"`` or ``"cuda"``.
        architecture: recorded in saved files and YAML (e.g. ``"resnet18"``).
        cuda_graph: replay delta frames through one CUDA graph (CUDA inputs only; see
            :mod:`deltaconvert.cuda_graph`); also settable later as ``model.cuda_graph``.
    """
    config = load_thresholds(thresholds)
    example = example_input if example_input is not None else default_example_input(model)
    example = example if isinstance(example, tuple) else (example,)

    lowered = lower_to_delta_graph(model, example, set(config.dense))
    islands = lowered.islands
    converted = DeltaGraphModule(lowered.root, lowered.graph, f"Delta{type(model).__name__}", backend=backend,
                                 conversion={"architecture": architecture or type(model).__name__,
                                             "dense_islands": islands,
                                             "forced_dense": sorted(set(config.dense) & set(islands)),
                                             "deltaconvert_version": __version__})
    data_config = timm_data_config(model)
    if data_config is not None:  # the preprocessing run/stream use (sources.Preprocess)
        converted.conversion["data_config"] = data_config
    config.apply_to(converted)
    converted.cuda_graph = cuda_graph
    if islands:
        listing = "\n".join(f"  {name}: {why}" for name, why in islands.items())
        warnings.warn(DenseFallbackWarning(
            f"{len(islands)} op(s) have no delta form here and run dense (Densify → op → "
            f"Sparsify):\n{listing}"), stacklevel=2)
    return converted
