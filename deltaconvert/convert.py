"""convert(): a stock PyTorch model → a stateful delta model, in one call.

The graph work is :func:`deltaconvert.graph.pipeline.lower_to_delta_graph`; this module
adds the user-facing parts: argument defaults, thresholds, the dense-island warning.
"""
from __future__ import annotations

import functools
import warnings
from pathlib import Path
from typing import Any, Union

import torch
from torch import fx, nn

from . import handlers  # noqa: F401  (fills the op registry)
from .backends import BACKENDS
from .errors import ConversionError, DeltaConvertError, InvalidArgument
from .frontends import prepare_source
from .graph.pipeline import lower_to_delta_graph
from .model import DeltaGraphModule
from .sources import timm_data_config
from .thresholds import ThresholdConfig, load_thresholds
from .validation import describe, input_signature
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
    raise InvalidArgument("cannot guess an input shape for a model without Conv2d: pass "
                          "example_input=torch.randn(...) to convert()")


@functools.cache
def _model_attributes() -> frozenset[str]:
    """Every attribute name of a converted model, of its class or set by ``__init__``
    (``backend``, ``conversion``, …): no op may be installed under one of these."""
    graph = fx.Graph()
    graph.output(None)
    return frozenset(dir(DeltaGraphModule)) | frozenset(vars(DeltaGraphModule(nn.Module(), graph)))


def _check_arguments(model: Any, example_input: Any, backend: Any, architecture: Any,
                     cuda_graph: Any) -> None:
    """Raise :class:`InvalidArgument` for arguments :func:`convert` cannot use."""
    if not isinstance(model, nn.Module):
        hint = (f" To build a torchvision architecture by name: "
                f"deltaconvert.architectures.build_architecture({model!r})"
                if isinstance(model, str) else "")
        raise InvalidArgument(f"convert(model=...): expected a torch.nn.Module (the model "
                              f"to convert), got {describe(model)}.{hint}")
    leaves = example_input if isinstance(example_input, tuple) else (example_input,)
    if example_input is not None and not all(isinstance(x, torch.Tensor) for x in leaves):
        raise InvalidArgument(f"convert(example_input=...): expected a tensor or a tuple of "
                              f"tensors (one input of the model, e.g. torch.randn(1, 3, 224, "
                              f"224)), got {describe(example_input)}")
    if backend not in BACKENDS:
        raise InvalidArgument(f"convert(backend=...): expected one of {', '.join(BACKENDS)}, "
                              f"got {describe(backend)}")
    if architecture is not None and not isinstance(architecture, str):
        raise InvalidArgument(f"convert(architecture=...): expected a name (str) or None, got "
                              f"{describe(architecture)}")
    if not isinstance(cuda_graph, bool):
        raise InvalidArgument(f"convert(cuda_graph=...): expected True or False, got "
                              f"{describe(cuda_graph)}")


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

    Threads: torch.fx patches ``nn.Module.__call__`` process-wide while it traces, so a
    module called from another thread during ``convert`` is routed into the tracer and
    fails (``NameError: module is not installed as a submodule``). Convert models before
    starting threads that run models (e.g. a :class:`~deltaconvert.streams.StreamPool`
    shared by camera threads).
    """
    _check_arguments(model, example_input, backend, architecture, cuda_graph)
    config = load_thresholds(thresholds)
    example = example_input if example_input is not None else default_example_input(model)
    example = example if isinstance(example, tuple) else (example,)

    source = prepare_source(model)
    try:
        lowered = lower_to_delta_graph(source.module, example, set(config.dense), source.leaves,
                                       _model_attributes())
    except DeltaConvertError:
        raise
    except Exception as error:  # noqa: BLE001 - no internal error reaches the user as is
        raise ConversionError(
            f"converting {type(model).__name__} failed: {type(error).__name__}: {error}\n"
            "If the example input does not fit the model (shape, dtype, device), pass one "
            "that does (example_input=...). Otherwise: keep the module named above as a "
            "single op that runs dense (deltaconvert.register_leaf_module(ItsClass) before "
            "convert()), and please report the model.") from error
    heads = {name: why for name, why in source.heads.items() if name in lowered.islands}
    islands = {name: why for name, why in lowered.islands.items() if name not in heads}
    converted = DeltaGraphModule(lowered.root, lowered.graph, f"Delta{type(model).__name__}", backend=backend,
                                 conversion={"architecture": architecture or type(model).__name__,
                                             "source": source.library,
                                             "inputs": input_signature(example),
                                             "dense_heads": heads,
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
