"""convert(): a stock PyTorch model → a stateful delta model, in one call.

    trace → normalise → fold BN → plan delta regions → insert boundaries → swap ops
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, Union

import torch
from torch import fx, nn

from . import handlers  # noqa: F401  (fills the op registry)
from .graph.analysis import propagate_value_info
from .graph.boundaries import insert_boundaries
from .graph.channels_last_blocks import channels_last_block_to_channels_first
from .graph.fold_bn import fold_batch_norm_into_conv
from .graph.functional_to_module import torch_functional_to_module
from .graph.inplace import inplace_to_out_of_place
from .graph.names import assign_stable_names, stable_name
from .graph.plan import plan_delta_regions
from .graph.rearrangements import rearrangement_chain_to_canonical_op
from .graph.remove_identities import remove_inference_identities
from .graph.spatial_mean import spatial_mean_to_global_pool
from .graph.swap import swap_to_delta_ops
from .graph.trace import trace_model
from .model import DeltaGraphModule
from .registry import describe_target
from .thresholds import ThresholdConfig, load_thresholds
from .version import __version__

NORMALIZE_PASSES: tuple[Callable[[fx.GraphModule], fx.GraphModule], ...] = (
    remove_inference_identities,
    inplace_to_out_of_place,
    torch_functional_to_module,
    spatial_mean_to_global_pool,
    channels_last_block_to_channels_first,
    rearrangement_chain_to_canonical_op,
    fold_batch_norm_into_conv,
)

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

    gm = trace_model(model)
    assign_stable_names(gm)
    for normalize in NORMALIZE_PASSES:
        propagate_value_info(gm, example)
        gm = normalize(gm)
    propagate_value_info(gm, example)

    plan = plan_delta_regions(gm, set(config.dense))
    modules = dict(gm.named_modules(remove_duplicate=False))
    islands = {stable_name(node): f"{describe_target(node, modules)}: {reason}"
               for node, reason in plan.islands.items()}
    boundaries = insert_boundaries(gm, plan)
    root, graph = swap_to_delta_ops(gm, {**plan.delta_ops, **boundaries})
    converted = DeltaGraphModule(root, graph, f"Delta{type(model).__name__}", backend=backend,
                                 conversion={"architecture": architecture or type(model).__name__,
                                             "dense_islands": islands,
                                             "forced_dense": sorted(set(config.dense) & set(islands)),
                                             "deltaconvert_version": __version__})
    config.apply_to(converted)
    converted.cuda_graph = cuda_graph
    if islands:
        listing = "\n".join(f"  {name}: {why}" for name, why in islands.items())
        warnings.warn(DenseFallbackWarning(
            f"{len(islands)} op(s) have no delta form here and run dense (Densify → op → "
            f"Sparsify):\n{listing}"), stacklevel=2)
    return converted
